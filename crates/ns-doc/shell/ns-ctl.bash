# ns-doc: names where clap only knows "a string": running machines (ns-ctl list) for the
# verbs that act on containers, images (ns-ctl list-images) for the verbs that act on images.
_ns_ctl_names() {
    ns-ctl "$1" 2>/dev/null | awk 'NR == 1 { next } !NF { exit } { print $1 }'
}
_ns_ctl_dynamic() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]} verb= what= i n=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
        # An option's value, after a space or an '=' (a word of its own in COMP_WORDS).
        -o | --output | -s | --signal | --kill-whom | -E | --setenv | --uid | --format | --verify | --tls-verify)
            [ "${COMP_WORDS[i + 1]}" = = ] && ((i++))
            ((i++))
            ;;
        =) ((i++)) ;;
        -*) ;;
        *) if [ -z "$verb" ]; then verb=${COMP_WORDS[i]}; else ((n++)); fi ;;
        esac
    done
    # An option, or an option's value: clap_complete's.
    case $cur in -*) verb= ;; esac
    case $prev in -* | =) verb= ;; esac
    case $verb in
    status | poweroff | stop | reboot | terminate | kill | log) what=list ;;
    shell | login) [ "$n" -eq 0 ] && what=list ;;
    start | image-status | show-image | remove) what=list-images ;;
    clone | rename | read-only | export-tar | export-raw) [ "$n" -eq 0 ] && what=list-images ;;
    esac
    if [ -n "$what" ]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_ns_ctl_names "$what")" -- "$cur")
        return 0
    fi
    _ns__ctl "$@"
}
complete -F _ns_ctl_dynamic -o bashdefault -o default ns-ctl
