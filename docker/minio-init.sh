#!/bin/sh
# The compose stack's one-shot MinIO job (`minio-init`), run in the MinIO client image: create the lake
# bucket and the MLflow artifact bucket, keep both private, and give ct and MLflow one access key each
# that reaches only its own bucket. The root credentials stay in this job and the MinIO server.
# Safe to run again on every `docker compose up`: each step checks before it changes anything.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${LAKE_BUCKET:?}" "${MLFLOW_ARTIFACT_BUCKET:?}"
: "${LAKE_S3_ACCESS_KEY:?}" "${LAKE_S3_SECRET_KEY:?}"
: "${MLFLOW_S3_ACCESS_KEY:?}" "${MLFLOW_S3_SECRET_KEY:?}"

mc alias set ct-minio http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null

# grant_bucket ACCESS_KEY SECRET_KEY BUCKET: a user whose one policy allows everything on BUCKET and nothing else.
grant_bucket() {
    access_key="$1" secret_key="$2" bucket="$3" policy="ct-rw-$3" policy_file="/tmp/ct-rw-$3.json"
    mc mb --ignore-existing "ct-minio/$bucket"
    mc anonymous set none "ct-minio/$bucket" >/dev/null
    cat >"$policy_file" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::$bucket"]},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                   "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::$bucket/*"]}
  ]
}
EOF
    mc admin policy create ct-minio "$policy" "$policy_file" >/dev/null
    # `user add` on an existing user only resets its secret key, which is what a changed .env asks for.
    mc admin user add ct-minio "$access_key" "$secret_key" >/dev/null
    # MinIO refuses to attach a policy twice ("already in effect"), so look first (no grep in the mc image).
    case "$(mc admin user info ct-minio "$access_key")" in
        *"$policy"*) ;;
        *) mc admin policy attach ct-minio "$policy" --user "$access_key" >/dev/null ;;
    esac
    echo "minio-init: bucket $bucket ready; $access_key may use it and nothing else"
}

grant_bucket "$LAKE_S3_ACCESS_KEY" "$LAKE_S3_SECRET_KEY" "$LAKE_BUCKET"
grant_bucket "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY" "$MLFLOW_ARTIFACT_BUCKET"
