# ns-doc: names where clap only knows "a string": running machines (ns-ctl list) for the
# verbs that act on containers, images (ns-ctl list-images) for the verbs that act on images.
function __ns_ctl_names
    ns-ctl $argv[1] 2>/dev/null | awk 'NR == 1 { next } !NF { exit } { print $1 }'
end
complete -c ns-ctl -f -n "__fish_seen_subcommand_from status poweroff stop reboot terminate kill shell login log" -a "(__ns_ctl_names list)"
complete -c ns-ctl -f -n "__fish_seen_subcommand_from start image-status show-image remove clone rename read-only export-tar export-raw" -a "(__ns_ctl_names list-images)"
