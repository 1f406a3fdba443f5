# Shared by infra/*.sh (sourced, not run).

show() {  # print a command line the shell can paste back: plain words bare, anything else single-quoted
    local word out=()
    for word in "$@"; do
        if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$word"); else out+=("'${word//\'/\'\\\'\'}'"); fi
    done
    echo "${out[*]}"
}

die() { echo "$(basename "$0"): $*" >&2; exit 2; }
