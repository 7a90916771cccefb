# ns-doc: -M/--machine completes the images ns-run can boot by name (ns-ctl list-images);
# everything else is clap_complete's _ns-run_clap.
_ns-run() {
    if [[ $words[CURRENT-1] == (-M|--machine) || $words[CURRENT] == --machine=* ]]; then
        local -a names
        names=(${(f)"$(ns-ctl list-images 2>/dev/null | awk 'NR == 1 { next } !NF { exit } { print $1 }')"})
        compset -P '--machine='
        compadd -a names
        return
    fi
    _ns-run_clap "$@"
}
