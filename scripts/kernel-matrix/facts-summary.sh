#!/usr/bin/env bash
# Writes DIR/SUMMARY.md from the facts files run.sh --facts wrote into DIR
# (one <kernel release>.txt per kernel): one table, a row per question and
# a column per kernel, each cell the answer and the line it comes from.
# Nothing is filled in by hand: a question a file does not answer shows "?".
#
#   scripts/kernel-matrix/facts-summary.sh [DIR]     (default docs/kernel-facts)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-$HERE/../../docs/kernel-facts}
OUT=$DIR/SUMMARY.md
files=()
while IFS= read -r f; do files+=("$f"); done < <(ls "$DIR"/*.txt 2>/dev/null | sort -V)
[ "${#files[@]}" -gt 0 ] || { echo "facts-summary: no facts files in $DIR" >&2; exit 2; }

# facts FILE: "key<TAB>answer<TAB>evidence" for every answer in FILE.
facts() {
  awk '
    /^==== / { section = $2; next }
    section == "bpftool" && /^eBPF helpers supported for program type / {
      type = $NF; sub(/:$/, "", type); next }
    section == "bpftool" && /^\t- bpf_/ { h = $2; listed[type ":" h] = 1; next }
    section == "bpftool" && /^eBPF map_type / { maps[$3] = ($5 == "available") ? "available" : "NOT available"; next }
    section == "kfacts" && /^FACT / {
      group = $2; subject = $3; answer = $4
      ev = $0; sub(/^FACT [^ ]+ [^ ]+ [^ ]+ /, "", ev)
      if (group == "helper") {
        # The "known" probe decides; its outcome is the evidence.
        k = ev; sub(/^known: /, "", k); sub(/; with real arguments: .*/, "", k)
        r = ev; sub(/.*; with real arguments: /, "", r)
        print "helper:" subject "\t" answer "\t" k "\t" r
      } else
        print group ":" subject "\t" answer "\t" ev
      next
    }
    END {
      for (k in listed) print "bt:" k "\tlisted\t"
      for (m in maps) print "btmap:" m "\t" maps[m] "\t"
    }' "$1"
}

# Questions: key|label. Keys are kfacts subjects (scripts/kernel-matrix/kfacts.c).
questions() {
  local t h
  echo "#|Helpers per program type (kfacts loads a call with zeroed arguments: \"unknown func\" means absent; bpftool's list beside it)"
  for t in cgroup_sock_addr cgroup_sock sock_ops cgroup_sockopt sk_msg sk_lookup; do
    echo "helper:$t:bpf_get_netns_cookie|bpf_get_netns_cookie in $t"; done
  for h in bpf_sk_storage_get bpf_sk_storage_delete; do
    for t in cgroup_sock_addr cgroup_sock sock_ops cgroup_sockopt sk_msg; do echo "helper:$t:$h|$h in $t"; done
  done
  for t in cgroup_sock cgroup_sock_addr sock_ops sk_msg; do
    echo "helper:$t:bpf_get_socket_cookie|bpf_get_socket_cookie in $t"; done
  echo "helper:cgroup_sock_addr:bpf_bind|bpf_bind in cgroup_sock_addr (connect4)"
  echo "helper:sk_lookup:bpf_sk_assign|bpf_sk_assign in sk_lookup"
  echo "helper:sock_ops:bpf_sock_map_update|bpf_sock_map_update in sock_ops"
  echo "helper:sock_ops:bpf_sock_hash_update|bpf_sock_hash_update in sock_ops"
  echo "helper:sk_msg:bpf_msg_redirect_hash|bpf_msg_redirect_hash in sk_msg"
  for h in bpf_get_current_uid_gid bpf_get_current_cgroup_id; do
    for t in cgroup_sock_addr cgroup_sock sock_ops cgroup_sockopt; do echo "helper:$t:$h|$h in $t"; done
  done
  echo "sockmap-lookup:sk_lookup:SOCKMAP|bpf_map_lookup_elem on a SOCKMAP from sk_lookup returns a socket (result passed to bpf_sk_assign, released)"
  echo "sockmap-lookup:sk_lookup:SOCKHASH|bpf_map_lookup_elem on a SOCKHASH from sk_lookup returns a socket (likewise)"
  echo "#|Attach types that load (a program that only returns, with that expected attach type)"
  for t in connect4 connect6 sendmsg4 sendmsg6 recvmsg4 recvmsg6 getpeername4 getpeername6 bind4 bind6 \
           post_bind4 post_bind6 sock_create getsockopt sockops sk_lookup; do
    echo "attach-load:$t|$t"; done
  echo "#|bpf_link"
  echo "link-cgroup|BPF_LINK_CREATE for cgroup attach types (each type above that loaded, on a child cgroup)"
  echo "link-create:sk_lookup|BPF_LINK_CREATE for sk_lookup on a netns"
  echo "link-update:cgroup(connect4)|BPF_LINK_UPDATE on a cgroup link (connect4)"
  echo "link-update:netns(sk_lookup)|BPF_LINK_UPDATE on a netns link (sk_lookup)"
  echo "#|Context fields (a program that reads the field)"
  echo "ctx:bpf_sk_lookup.ingress_ifindex|bpf_sk_lookup.ingress_ifindex readable"
  echo "ctx:bpf_sock_addr.sk|bpf_sock_addr.sk readable"
  echo "ctx:bpf_sockopt.sk|bpf_sockopt.sk readable"
  echo "#|Map types (BPF_MAP_CREATE; bpftool's line beside it)"
  for t in LRU_HASH LPM_TRIE SK_STORAGE SOCKHASH PERCPU_ARRAY; do echo "map:$t|$t"; done
}

# unparen: $ev without the parentheses around it, when one pair encloses it all.
unparen() { if [[ $ev =~ ^\([^()]*\)$ ]]; then ev=${ev:1:${#ev}-2}; fi; }

# cell KEY FACTS_TSV: one table cell.
cell() {
  local key=$1 tsv=$2 line answer ev rest
  case $key in
    helper:*)
      line=$(awk -F'\t' -v k="$key" '$1 == k' "$tsv")
      [ -n "$line" ] || { echo "?"; return; }
      IFS=$'\t' read -r _ answer ev rest <<< "$line"
      local t=${key#helper:}; t=${t%%:*}
      local h=${key##*:} bt="not listed"
      awk -F'\t' -v k="bt:$t:$h" '$1 == k { f = 1 } END { exit !f }' "$tsv" && bt="listed"
      local flag=""
      { [ "$answer" = yes ] && [ "$bt" = "not listed" ]; } || { [ "$answer" = no ] && [ "$bt" = listed ]; } &&
        flag=" **(bpftool disagrees)**"
      unparen
      [[ $rest =~ ^\([^()]*\)$ ]] && rest=${rest:1:${#rest}-2}
      echo "**$answer** — \`$ev\`; bpftool: $bt$flag; with real arguments: \`$rest\`" ;;
    link-cgroup)
      local ok bad total
      ok=$(awk -F'\t' '$1 ~ /^link-create:/ && $1 != "link-create:sk_lookup" && $2 == "yes"' "$tsv" | wc -l)
      total=$(awk -F'\t' '$1 ~ /^link-create:/ && $1 != "link-create:sk_lookup" && $2 != "n/a"' "$tsv" | wc -l)
      bad=$(awk -F'\t' '$1 ~ /^link-create:/ && $1 != "link-create:sk_lookup" && $2 == "no" { sub(/^link-create:/, "", $1); printf "%s%s", sep, $1; sep = ", " }' "$tsv")
      [ "$total" -gt 0 ] || { echo "?"; return; }
      if [ "$ok" = "$total" ]; then echo "**yes** — \`BPF_LINK_CREATE on a cgroup: OK\` for $ok of $total types"
      else echo "**partly** — OK for $ok of $total types; refused: $bad"; fi ;;
    map:*)
      line=$(awk -F'\t' -v k="$key" '$1 == k' "$tsv")
      [ -n "$line" ] || { echo "?"; return; }
      IFS=$'\t' read -r _ answer ev <<< "$line"
      local m bt
      m=$(echo "${key#map:}" | tr 'A-Z' 'a-z')
      bt=$(awk -F'\t' -v k="btmap:$m" '$1 == k { print $2 }' "$tsv")
      unparen
      echo "**$answer** — \`$ev\`; bpftool: \`eBPF map_type $m is ${bt:-?}\`" ;;
    *)
      line=$(awk -F'\t' -v k="$key" '$1 == k' "$tsv")
      [ -n "$line" ] || { echo "?"; return; }
      IFS=$'\t' read -r _ answer ev <<< "$line"
      unparen
      echo "**$answer** — \`$ev\`" ;;
  esac
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
kvers=()
for f in "${files[@]}"; do
  k=$(basename "$f" .txt)
  kvers+=("$k")
  facts "$f" > "$tmp/$k.tsv"
done

{
  echo "# Kernel facts: summary"
  echo
  echo "Generated by \`scripts/kernel-matrix/facts-summary.sh\` from the files beside"
  echo "this one, which \`scripts/kernel-matrix/run.sh --quick --facts docs/kernel-facts\`"
  echo "recorded in qemu boots of each kernel (see each file's header). Every answer"
  echo "comes from a boot; the evidence is the verifier's message or the syscall's"
  echo "result as kfacts (\`scripts/kernel-matrix/kfacts.c\`) printed it, and where"
  echo "bpftool answers the same question, its line. \"?\" means not recorded."
  echo "cgroup_sock_addr is asked with the connect4 attach type, cgroup_sock with"
  echo "sock_create, cgroup_sockopt with getsockopt."
  echo
  printf '| question |'; for k in "${kvers[@]}"; do printf ' %s |' "$k"; done; echo
  printf '|---|'; for _ in "${kvers[@]}"; do printf -- '---|'; done; echo
  while IFS='|' read -r key label; do
    if [ "$key" = "#" ]; then
      printf '| ***%s*** |' "$label"; for _ in "${kvers[@]}"; do printf ' |'; done; echo
      continue
    fi
    printf '| %s |' "$label"
    for k in "${kvers[@]}"; do printf ' %s |' "$(cell "$key" "$tmp/$k.tsv" | sed 's/|/\\|/g')"; done
    echo
  done < <(questions) | tee "$tmp/table"
  echo
  if grep -q 'bpftool disagrees' "$tmp/table"; then
    echo "Where bpftool disagrees: newer kernels refuse a helper the program type"
    echo "lacks with \"program of this type cannot use helper ...\" instead of"
    echo "\"unknown func ...\" (the cell quotes it). bpftool 7.1 asks through"
    echo "libbpf 1.1's helper probe, which takes only \"invalid func\" and"
    echo "\"unknown func\" for a missing helper and so lists these. The program"
    echo "with real arguments is refused the same way, so kfacts' answer stands."
    echo "meshcap's own probes use the same libbpf call (\`libbpf_probe_bpf_helper\`)."
    echo
  fi
  echo "## Also recorded in the same boots"
  echo
  for i in "${!files[@]}"; do
    f=${files[$i]} k=${kvers[$i]}
    echo "### $k"
    echo
    echo "- memlock: \`$(awk -F'\t' '$1 == "memlock:charged-to-rlimit" { print ($2 == "yes" ? "BPF memory is charged to RLIMIT_MEMLOCK" : "BPF memory is charged to the memory cgroup") " " $3 }' "$tmp/$k.tsv")\`"
    echo "- meshcap's programs loaded one at a time from build/bpf/meshcap.bpf.o (rodata at its defaults):"
    awk -F'\t' '$1 ~ /^object-prog:/ { sub(/^object-prog:/, "", $1); printf "  - %s: %s %s\n", $1, $2, $3 }' "$tmp/$k.tsv" | sort
    echo "- \`meshcap probe\` plan for istio-init's defaults:"
    awk '/^==== meshcap-probe/ { on = 1; next } /^==== / { on = 0 } on && /^  (outbound|inbound):/ { sub(/^  /, ""); print "  - " $0 }' "$f"
    echo "- \`meshcap init --mode ebpf\` (debug log in the facts file): $(awk '/^==== meshcap-init/ { on = 1; next } /^==== / { on = 0 } on && /^\(exit / { print last " " $0 } on { last = $0 }' "$f")"
    echo "- quick test set (boots of \`run.sh --quick\`):"
    awk '/^==== boots/ { on = 1; next } on && NF { print "      " $0 }' "$f"
    echo
  done
} > "$OUT"
echo "facts-summary: wrote $OUT (${#kvers[@]} kernels)"
