#!/usr/bin/env bash
# Create the two instance profiles ray_cluster.yaml names (docs/cluster.md, "AWS roles"), once per account:
#   etc-pipeline-worker  S3 read/write on the bucket (worker-policy.json)
#   etc-pipeline-head    the same, the EC2 calls of Ray's autoscaler, the AMI's SSM parameter, and iam:PassRole on
#                        the workers' role (head-policy.json): without it, launching a worker with its profile fails
# Needs the AWS CLI with rights to create IAM roles. Re-running updates the policies and leaves the rest as it is.
set -euo pipefail

usage() {
    echo "Usage: infra/aws/create_roles.sh BUCKET [--print]   (BUCKET: \$ETC_BUCKET, the bucket of configs/cityscapes.yaml)"
}
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { usage; exit 0; }
[ $# -ge 1 ] || { usage >&2; exit 2; }
BUCKET=$1
PRINT=${2:-}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ACCOUNT=${AWS_ACCOUNT_ID:-}
if [ -z "$ACCOUNT" ] && [ "$PRINT" != "--print" ]; then
    ACCOUNT=$(aws sts get-caller-identity --query Account --output text)
fi
policy() {  # a policy file with the bucket and account filled in
    sed -e "s/BUCKET/$BUCKET/g" -e "s/ACCOUNT/${ACCOUNT:-ACCOUNT}/g" "$HERE/$1"
}
if [ "$PRINT" = "--print" ]; then
    echo "# etc-pipeline-worker"; policy worker-policy.json
    echo "# etc-pipeline-head"; policy head-policy.json
    exit 0
fi
for role in worker head; do
    name=etc-pipeline-$role
    aws iam get-role --role-name "$name" >/dev/null 2>&1 ||
        aws iam create-role --role-name "$name" --assume-role-policy-document "file://$HERE/trust-ec2.json" >/dev/null
    aws iam put-role-policy --role-name "$name" --policy-name "$name" --policy-document "$(policy $role-policy.json)"
    if ! aws iam get-instance-profile --instance-profile-name "$name" >/dev/null 2>&1; then
        aws iam create-instance-profile --instance-profile-name "$name" >/dev/null
        aws iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name"
    fi
    echo "$name: ready"
done
