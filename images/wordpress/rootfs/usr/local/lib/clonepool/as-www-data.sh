# shellcheck shell=sh
# Sourced by the clonepool WordPress helpers: when started as root, run again as www-data so any
# file WordPress creates stays writable by Apache. stdin is passed through untouched.
if [ "$(id -u)" = 0 ]; then
    exec /usr/bin/setpriv --reuid=www-data --regid=www-data --init-groups --reset-env -- "$0" "$@"
fi
