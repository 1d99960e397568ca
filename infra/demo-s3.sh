#!/usr/bin/env bash
# Publish the demo to a local S3 server (moto, loopback) and promote `live` through the quality gate,
# then list the versions and search through the alias. Needs `make demo`'s .venv (moto is a dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${S3_PORT:-5055}
export AWS_ENDPOINT_URL="http://127.0.0.1:${PORT}" AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo-secret \
       AWS_DEFAULT_REGION=us-east-1
.venv/bin/moto_server -H 127.0.0.1 -p "$PORT" > /tmp/embedpipe-moto.log 2>&1 &
SERVER=$!
trap 'kill $SERVER' EXIT
for _ in $(seq 50); do curl -fs "$AWS_ENDPOINT_URL" > /dev/null && break; sleep 0.2; done
.venv/bin/python -c "import boto3; boto3.client('s3').create_bucket(Bucket='embedpipe-demo')"
ROOT=s3://embedpipe-demo/root
.venv/bin/embedpipe run configs/demo.yaml --set storage.root=$ROOT --set publish.alias=live --no-example
.venv/bin/embedpipe versions $ROOT scifact-demo
.venv/bin/embedpipe search $ROOT/aliases/scifact-demo/live "statins lower the risk of heart disease" -k 3
