# ns-doc: -M/--machine completes the images ns-run can boot by name (ns-ctl list-images).
complete -c ns-run -s M -l machine -x -a "(ns-ctl list-images 2>/dev/null | awk 'NR == 1 { next } !NF { exit } { print \$1 }')"
