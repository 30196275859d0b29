#!/usr/bin/env bash
# The failover loop route-failover replaces, re-implemented from its
# semantics (DESIGN.md §2) to measure against. Flaws kept on purpose:
#   - one round of `ping -c 3 -W 1` with no reply fails over (no fall count);
#   - failback after 10 good rounds in total while on VPN (no reset on a bad round);
#   - state in a shell variable only; API errors ignored (the state flips anyway);
#   - one target, one table, one CIDR; every switch forks the AWS CLI.
#
# usage: baseline-loop.sh PROBE_IP ROUTE_TABLE_ID CIDR ENI_ID
# The AWS CLI is told the endpoint by AWS_ENDPOINT_URL (LocalStack here).
set -u
probe=$1 rtb=$2 cidr=$3 eni=$4
wait_between=${WAIT_BETWEEN_PINGS:-0}
region=${AWS_REGION:-us-east-1}
active=DX
dx_tries=0

echo "$(date +%s.%N) baseline: monitoring $probe"
while :; do
    replies=$(ping -n -c 3 -W 1 "$probe" 2>/dev/null | grep -c 'time=')
    if [ "$replies" -eq 0 ]; then
        if [ "$active" = DX ]; then
            echo "$(date +%s.%N) baseline: Direct Connect failed, switching to VPN"
            aws ec2 create-route --route-table-id "$rtb" --destination-cidr-block "$cidr" \
                --network-interface-id "$eni" --region "$region" >/dev/null
            active=VPN
            dx_tries=10
        fi
    elif [ "$active" = VPN ]; then
        dx_tries=$((dx_tries - 1))
        if [ "$dx_tries" -eq 0 ]; then
            echo "$(date +%s.%N) baseline: switching back to Direct Connect"
            aws ec2 delete-route --route-table-id "$rtb" --destination-cidr-block "$cidr" \
                --region "$region" >/dev/null
            active=DX
        fi
    fi
    sleep "$wait_between"
done
