#!/bin/sh
# Send the usage records nginx wrote (deploy/nginx/metering-auth.conf) to Metering's
# POST /internal/v1/usage, from cron or a loop:
#
#   METERING_URL=http://127.0.0.1:8000 METERING_SERVICE_TOKEN=... ship-usage.sh USAGE_LOG [NGINX_PID_FILE]
#
# It moves the log aside (with the pid file, nginx is told to reopen its logs) and posts the moved
# records in batches of at most 5,000, leaving out the fields nginx wrote empty (no bill-to, no
# hold). Each answer is printed: {"accepted", "duplicates", "rejected": [{"index", "error"}]}.
# A batch that could not be sent stays in USAGE_LOG.sending and goes first next time; sending a
# record again is harmless, as Metering stores each (provider, request id) once.
# Needs sh, jq, curl and split.
set -eu

log=$1
pid_file=${2:-}
: "${METERING_URL:?set METERING_URL to Metering's base URL, e.g. http://127.0.0.1:8000}"
: "${METERING_SERVICE_TOKEN:?set METERING_SERVICE_TOKEN to one of Metering's service tokens}"
sending=$log.sending

if [ ! -s "$sending" ]; then
    [ -s "$log" ] || exit 0
    mv "$log" "$sending"
    if [ -n "$pid_file" ]; then
        kill -USR1 "$(cat "$pid_file")"
        sleep 1 # nginx's workers finish the lines they had begun in the moved file
    fi
fi

split -l 5000 "$sending" "$sending.part-"
for part in "$sending".part-*; do
    jq -c -s '{records: map(with_entries(select(.value != "")))}' "$part" |
        curl -sS --fail-with-body -X POST "$METERING_URL/internal/v1/usage" \
            -H "Authorization: Bearer $METERING_SERVICE_TOKEN" -H 'Content-Type: application/json' \
            --data-binary @-
    echo
    rm "$part"
done
rm "$sending"
