#!/bin/sh
# Add a Compute user to Mosquitto's password file (and, for a worker, its block to the ACL file).
#
#   add-user.sh server               # user compute-server
#   add-user.sh dashboard            # user dashboard (read-only)
#   add-user.sh worker <worker-id>   # user <worker-id>, limited to that worker's topics
#
# Prompts for the password, or reads it from $PASSWORD (for scripts; it then shows in `ps` while
# mosquitto_passwd runs). Files: $PASSWD_FILE (default /etc/mosquitto/compute.passwd) and
# $ACL_FILE (default /etc/mosquitto/compute.acl). Reload Mosquitto afterwards (SIGHUP).
set -eu

PASSWD_FILE=${PASSWD_FILE:-/etc/mosquitto/compute.passwd}
ACL_FILE=${ACL_FILE:-/etc/mosquitto/compute.acl}

usage() { echo "usage: $0 server | dashboard | worker <worker-id>" >&2; exit 2; }

[ $# -ge 1 ] || usage
case "$1" in
  server) [ $# -eq 1 ] || usage; user=compute-server ;;
  dashboard) [ $# -eq 1 ] || usage; user=dashboard ;;
  worker)
    [ $# -eq 2 ] || usage
    user=$2
    # Worker ids are topic segments (letters, digits, _ . : @ -); ':' cannot be in a Mosquitto user.
    if ! printf '%s' "$user" | grep -Eq '^[A-Za-z0-9_.@-]{1,128}$'; then
      echo "worker id '$user' may only use letters, digits and _ . @ -" >&2; exit 2
    fi
    case "$user" in compute-server|dashboard)
      echo "'$user' is a role, not a worker id" >&2; exit 2 ;;
    esac
    if [ ! -f "$ACL_FILE" ]; then echo "ACL file $ACL_FILE not found" >&2; exit 2; fi
    if grep -qx "user $user" "$ACL_FILE"; then
      echo "worker '$user' already has a block in $ACL_FILE; only its password is set" >&2
    else
      cat >> "$ACL_FILE" <<ACL

user $user
topic read      compute/jobs/available/+
topic write     compute/events/+/+
topic readwrite compute/workers/$user/info
topic readwrite compute/workers/$user/status
topic read      compute/workers/$user/confirm
topic read      compute/workers/$user/cancel
topic readwrite inference/workers/$user
ACL
    fi
    ;;
  *) usage ;;
esac

create=
[ -f "$PASSWD_FILE" ] || create=-c
if [ -n "${PASSWORD:-}" ]; then
  mosquitto_passwd $create -b "$PASSWD_FILE" "$user" "$PASSWORD"
else
  mosquitto_passwd $create "$PASSWD_FILE" "$user"
fi
echo "user $user set in $PASSWD_FILE; reload Mosquitto (systemctl reload mosquitto)"
