"""The training core: shards, the streaming loader, on-device augmentation, the loop and its checkpoints.

It imports only torch, torchvision and numpy, so it runs wherever torch does (a bare GPU host, a pod,
a CPU laptop). The train step (:mod:`ml.learn.train`) wires it to the lake and MLflow.
"""
