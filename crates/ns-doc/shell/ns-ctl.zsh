# ns-doc: names where clap only knows "a string": running machines (ns-ctl list) for the
# verbs that act on containers, images (ns-ctl list-images) for the verbs that act on images;
# everything else is clap_complete's _ns-ctl_clap.
_ns-ctl() {
    local verb= what= i n=0
    for (( i = 2; i < CURRENT; i++ )); do
        case $words[i] in
        (-o|--output|-s|--signal|--kill-whom|-E|--setenv|--uid|--format|--verify|--tls-verify) (( i++ )) ;;
        (-*) ;;
        (*) if [[ -z $verb ]]; then verb=$words[i]; else (( n++ )); fi ;;
        esac
    done
    [[ $words[CURRENT] == -* || $words[CURRENT-1] == -* ]] && verb=
    case $verb in
    (status|poweroff|stop|reboot|terminate|kill|log) what=list ;;
    (shell|login) (( n == 0 )) && what=list ;;
    (start|image-status|show-image|remove) what=list-images ;;
    (clone|rename|read-only|export-tar|export-raw) (( n == 0 )) && what=list-images ;;
    esac
    if [[ -n $what ]]; then
        local -a names
        names=(${(f)"$(ns-ctl $what 2>/dev/null | awk 'NR == 1 { next } !NF { exit } { print $1 }')"})
        compadd -a names
        return
    fi
    _ns-ctl_clap "$@"
}
