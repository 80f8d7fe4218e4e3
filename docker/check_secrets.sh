#!/bin/sh
# Entrypoint of the project image: refuse to start a service whose secrets are set but empty,
# too short, or still a placeholder of .env.example, then run its command. A secret that is not
# set at all is left to the service (a worker on another machine needs only GRADER_TOKEN).
set -eu
refuse() {
    echo "refusing to start: $1; set it in .env (openssl rand -hex 24) and start again" >&2
    exit 78  # EX_CONFIG
}
for name in REDIS_PASSWORD GRADER_TOKEN GATEWAY_TOKEN; do
    eval "is_set=\${$name+yes} value=\${$name-}"
    [ -n "$is_set" ] || continue
    case "$value" in
        "" | *change-me* | *changeme* | *CHANGE-ME* | *placeholder*)
            refuse "$name is empty or a placeholder of .env.example" ;;
    esac
    [ "${#value}" -ge 16 ] || refuse "$name is shorter than 16 characters"
done
# The password goes into redis:// URLs and redis.conf unquoted: URL-safe characters only.
case "${REDIS_PASSWORD-}" in
    *[!A-Za-z0-9._~-]*) refuse "REDIS_PASSWORD may hold only letters, digits and . _ ~ -" ;;
esac
exec "$@"
