# ns-doc: -M/--machine completes the images ns-run can boot by name (ns-ctl list-images).
_ns_run_dynamic() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
    if [ "$cur" = = ]; then
        cur=
    elif [ "$prev" = = ] && [ "$COMP_CWORD" -ge 2 ]; then
        prev=${COMP_WORDS[COMP_CWORD - 2]}
    fi
    case $prev in
    -M | --machine)
        mapfile -t COMPREPLY < <(compgen -W "$(ns-ctl list-images 2>/dev/null |
            awk 'NR == 1 { next } !NF { exit } { print $1 }')" -- "$cur")
        return 0
        ;;
    esac
    _ns__run "$@"
}
complete -F _ns_run_dynamic -o bashdefault -o default ns-run
