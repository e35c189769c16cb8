"""The world a retrain run sees besides the data: the champion, and the policy memory.

A live run's is the present: ``@champion`` as MLflow has it, and ``state/policy.json``. A backfill's is
the past, read from the records: the champion that the decision history says held ``@champion`` at
the run's time (:func:`ml.release.history.champion_at`) and the policy memory the last live decision
before it left (:func:`ml.decide.policy.state_at`). Either way the result says where each came from,
and the window pins it (:mod:`ml.data.window`).
"""

from __future__ import annotations

import logging

from ml.config import Settings
from ml.data.window import World, trained_batches
from ml.decide.policy import load_state, state_at
from ml.release import registry
from ml.release.history import champion_at, read_history
from ml.storage import Lake

log = logging.getLogger(__name__)


def live_world(settings: Settings, lake: Lake) -> World:
    """A live run's world: ``@champion`` as MLflow has it now, and the live policy memory."""
    champion = registry.champion(registry.client(settings), settings.model_name)
    version = champion.version if champion is not None else None
    reference = trained_batches(lake, champion.tags.get(registry.WINDOW_TAG)) if champion is not None else []
    state = load_state(lake)
    return World(
        champion_version=version,
        reference_batches=reference,
        champion_source={"version": version, "source": f"@{registry.CHAMPION} in MLflow's registry (live)"},
        considered_batches=set(state.considered_batches),
        policy_source={"source": f"state/policy.json revision {state.revision} (live)", "revision": state.revision},
    )


def world_at(settings: Settings, lake: Lake, as_of: float) -> World:
    """A backfill's world at ``as_of``: the champion and the policy memory of that moment, from the history."""
    records, problems = read_history(lake)
    if problems:
        log.warning("%d unreadable decision records were skipped: %s", len(problems), problems[:3])
    champion = champion_at(records, as_of)
    reference: list[str] = []
    if champion["version"] is not None:
        version = registry.get_version(registry.client(settings), settings.model_name, champion["version"])
        reference = trained_batches(lake, version.tags.get(registry.WINDOW_TAG))
    state, policy_source = state_at(lake, as_of)
    return World(champion["version"], reference, champion, set(state.considered_batches), policy_source)


def champion_age_days(settings: Settings, version: str, as_of: float) -> float:
    """How old the champion was at ``as_of``: since the time of the run that trained it (else its registration)."""
    mv = registry.client(settings).get_model_version(settings.model_name, version)
    born = float(mv.tags.get(registry.AS_OF_TAG) or mv.creation_timestamp / 1000)
    return (as_of - born) / 86400
