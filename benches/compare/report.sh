#!/usr/bin/env bash
# Turns the raw numbers of one run of benches/compare/run.sh (results/*.tsv)
# into the markdown report: tables, ratios and the goals.
#
#   benches/compare/report.sh benches/compare/results/<timestamp>.tsv
set -euo pipefail
RAW=${1:?usage: report.sh RESULTS.tsv}

awk -F'\t' '
# First pass: where the org-independent part of the closed loop ends.
FNR == NR {
    if ($1 == "cell" && ($3 == "direct" || $3 == "nginx-bare" || $3 == "haproxy-bare")) last_indep = FNR
    next
}
function fmt(v, d) { return (v == "" ? "—" : sprintf("%." d "f", v)) }
function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "" : a / b }
function verdict(ok, have) { return have ? (ok ? "met" : "**missed**") : "not measured" }
# The spread of a ratio over the rounds, lowest and highest ("" with fewer than
# 2 rounds): round i of one target against round i of the other (the targets
# take turns within a round, so the two ran within a minute or so of each
# other). Should two cells have different numbers of rounds (a target that
# failed to start in one), each round of the one with fewer is paired with the
# round of the other recorded nearest to it.
function absd(v) { return v < 0 ? -v : v }
function spread(a, b,   m, i, j, best, r, lo, hi, x, y, swap) {
    if (!(a in cnt) || !(b in cnt)) return ""
    swap = cnt[a] > cnt[b]
    x = swap ? b : a; y = swap ? a : b
    m = cnt[x]
    if (m < 2) return ""
    for (i = 1; i <= m; i++) {
        best = i
        if (cnt[y] != m) {
            best = 1
            for (j = 2; j <= cnt[y]; j++)
                if (absd(ln[y, j] - ln[x, i]) < absd(ln[y, best] - ln[x, i])) best = j
        }
        split(line[x, i], A, "\t"); split(line[y, best], B, "\t")
        if (A[5] + 0 == 0 || B[5] + 0 == 0) return ""
        r = swap ? B[5] / A[5] : A[5] / B[5]
        if (i == 1 || r < lo) lo = r
        if (i == 1 || r > hi) hi = r
    }
    return sprintf("; rounds %.2f to %.2f", lo, hi)
}
function irange(t, p) { return ins_cnt[t, p] > 1 ? sprintf(" [%.0f–%.0f]", ins_lo[t, p], ins_hi[t, p]) : "" }
function other(k) { return (k in c1) ? c1[k] - 100 * share[k] : 0 }
function noise(a, b,   m) {
    m = other(a); if (other(b) > m) m = other(b)
    return m > 10 ? sprintf(" (noisy: others used up to %.0f%% of core 1)", m) : ""
}
function label(t) {
    if (t ~ /\+admin$/) { sub(/\+admin$/, "", t); return label(t) ", admin mutation every " oadmin[t "+admin"] " ms" }
    if (t ~ /-before$/) { sub(/-before$/, "", t); return label(t) " [" before "]" }
    return t == "direct" ? "upstream direct" : \
        t == "kg" ? "keygate job (1 worker)" : \
        t == "kg-multi" ? "keygate job (default runtime)" : \
        t == "kg-mt" ? "keygate job (multi-thread runtime)" : \
        t == "kg-mt1" ? "keygate job (multi-thread runtime, 1 worker)" : \
        t == "kg-bare" ? "keygate bare (1 worker)" : \
        t == "nginx" ? "nginx job" : t == "nginx-bare" ? "nginx bare" : \
        t == "haproxy" ? "HAProxy job" : t == "haproxy-bare" ? "HAProxy bare" : t
}
$1 == "meta" {
    stamp = $2; dur = $3; warm = $4; conns = $5; orgs = $6; quick = $7; kernel = $8
    cores = $9; cpu = $10; wrkv = $11; nginxv = $12; haproxyv = $13; load = $14
    body = ($15 == "" ? 12 : $15)
    scheme = ($16 == "" ? "http" : $16); alpn = $17; build = $18; before = $19; kglog = $20
}
$1 == "import" { imp[$2] = $3 }
$1 == "start" { if (!(($3, $2) in st)) stn[++nst] = $3 SUBSEP $2; st[$3, $2] = $4; strss[$3, $2] = $5 }
$1 == "cell" {
    # With ROUNDS > 1 a cell is measured several times; the report shows the
    # round with the median req/s (all of its numbers) and the range.
    if ($3 !~ /-bare(-before)?$/ && $3 != "direct") ns[$2] = 1
    k = $3 SUBSEP $2 SUBSEP $4
    # keygate bare also takes its turn beside the job at each org count (after
    # the last of the other org-independent cells): those rounds are cells of
    # their own, even at BARE_ORGS, so that each ratio compares rounds measured
    # side by side, not minutes apart.
    if ($3 ~ /^kg-bare/ && FNR > last_indep) k = k SUBSEP "job"
    if (!(k in cnt)) cells[++nc] = k
    cnt[k]++; line[k, cnt[k]] = $0; ln[k, cnt[k]] = FNR
    # The org-independent cells run first: the first of each target and path.
    if (!(($3, $4) in byt)) byt[$3, $4] = k
}
$1 == "open" {
    ot[++no] = $3; on = $2; orate = $4
    o50[$3] = $5; o90[$3] = $6; o99[$3] = $7; o999[$3] = $8; omax[$3] = $9
    osch[$3] = $10; ocomp[$3] = $11; o2xx[$3] = $12; oerr[$3] = $13; ounf[$3] = $14; olag[$3] = $15
}
$1 == "openadmin" { oadmin[$2] = $3; oadmin_ok[$2] = $4; oadmin_bad[$2] = $5 }
$1 == "startup" { su[++nsu] = $3 SUBSEP $4 SUBSEP $5 }
$1 == "rotation" { rot = $2; rotrc = $3; rotw = $4 }
$1 == "instr" {
    if (!($3 in ins_seen)) { ins_seen[$3] = 1; ins_t[++nins] = $3 }
    # With INSTR_ROUNDS > 1 a target is counted several times: the report
    # shows the median (and its round'"'"'s other numbers) and the range.
    ic = ++ins_cnt[$3, $4]
    ins_v[$3, $4, ic] = $6 / $5; ins_r[$3, $4, ic] = $5; ins_c[$3, $4, ic] = $7; ins_w[$3, $4, ic] = $8
    ins_n = $2; if ($7 != "") ins_has_conn = 1
    if (ic > ins_rounds) ins_rounds = ic
}
END {
    for (kp in ins_cnt) {
        m = ins_cnt[kp]; split(kp, f, SUBSEP)
        for (a = 1; a <= m; a++) idx[a] = a
        for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++) if (ins_v[f[1], f[2], idx[b]] < ins_v[f[1], f[2], idx[a]]) { t = idx[a]; idx[a] = idx[b]; idx[b] = t }
        md = idx[int((m + 1) / 2)]
        ins[kp] = ins_v[f[1], f[2], md]; ins_req[kp] = ins_r[f[1], f[2], md]
        ins_conn[kp] = ins_c[f[1], f[2], md]; ins_warm[kp] = ins_w[f[1], f[2], md]
        ins_lo[kp] = ins_v[f[1], f[2], idx[1]]; ins_hi[kp] = ins_v[f[1], f[2], idx[m]]
    }
    # A cell whose target failed to start in a round has fewer rounds than
    # the rest: the report names the fewest.
    rounds = 0
    for (i = 1; i <= nc; i++) {
        k = cells[i]; m = cnt[k]
        if (rounds == 0 || m < rounds) rounds = m
        for (a = 1; a <= m; a++) { split(line[k, a], F, "\t"); v[a] = F[5] + 0; idx[a] = a }
        for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++) if (v[idx[b]] < v[idx[a]]) { t = idx[a]; idx[a] = idx[b]; idx[b] = t }
        lo[k] = v[idx[1]]; hi[k] = v[idx[m]]
        split(line[k, idx[int((m + 1) / 2)]], F, "\t")
        rps[k] = F[5]; p50[k] = F[6]; p99[k] = F[7]; nonok[k] = F[8]; serr[k] = F[9]
        share[k] = F[10]; percore[k] = F[11]; rss[k] = F[12]; c0[k] = F[13]; c1[k] = F[14]; chk[k] = F[15]
    }
    printf "# keygate vs nginx vs HAProxy: run %s\n\n", stamp
    if (quick == 1) print "**QUICK smoke run**: short cells, a subset of the org counts.\n"
    printf "- cells: %s s of closed-loop load after %s s of warm-up, wrk with 1 thread and %s connections\n", dur, warm, conns
    printf "- org counts: %s\n", orgs
    printf "- upstream answers: 200 with a %s-byte JSON body%s\n", body, (body == 12 ? " ({\"ok\":true} and a newline)" : "")
    if (scheme == "https") printf "- upstream over **HTTPS** (rustls, ALPN %s; a private CA the proxies verify against)\n", alpn
    else print "- upstream over plain HTTP"
    if (build != "") printf "- keygate: this tree, commit %s%s\n", build, (before != "" ? sprintf("; *[%s]*: the second build (KG_BEFORE_BIN)", before) : "")
    if (kglog != "") printf "- keygate runs with KEYGATE_LOG=%s%s\n", kglog, (kglog == "warn" ? " (which also takes the access log out of the request path)" : "")
    if (rounds > 1) printf "- rounds: each cell measured %d times, the targets taking turns; tables show the round with the median req/s, and *range* the lowest and highest req/s\n", rounds
    printf "- machine: %s cores, %s, Linux %s; load average at the start: %s\n", cores, cpu, kernel, load
    printf "- wrk %s, nginx %s, HAProxy %s\n", wrkv, nginxv, haproxyv
    print "- topology: load generator and upstream on core 0, the proxy under test on core 1 (keygate --workers 1, nginx 1 worker, HAProxy 1 thread); \"default runtime\" is keygate unpinned with its default worker count"
    print ""

    print "## Closed loop (wrk)\n"
    print "Latencies in microseconds. *proxy CPU* is the proxy'"'"'s CPU time per wall-clock second over the steady 80% of the run (1.00 = one core busy), *req/core-s* the requests per second of the proxy'"'"'s CPU time. core0 and core1 are how busy each core was over the same window (core 0 carries wrk and the upstream); for *upstream direct*, *proxy CPU* is the upstream'"'"'s. *others on core1* is how busy core 1 was beyond the pinned proxy: other processes of the machine competing with it (near 0 on a quiet machine). *check*: one request with the same org and key, and for the job, what reached the upstream (path without the org, no key header, x-org-id).\n"
    print "| orgs | target | path | req/s | range | p50 | p99 | non-2xx % | socket errors | proxy CPU | req/core-s | RSS MiB | core0 % | core1 % | others on core1 % | check |"
    print "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    for (i = 1; i <= nc; i++) {
        k = cells[i]; split(k, f, SUBSEP)
        bare = (f[1] == "direct" || f[1] ~ /-bare(-before)?$/)
        pinned = (f[1] != "direct" && f[1] !~ /^kg-multi/ && f[1] != "kg-mt")
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", \
            (bare ? f[2] (f[4] == "job" ? " (paths only, beside the job)" : " (paths only)") : f[2]), label(f[1]), f[3], fmt(rps[k], 0), \
            (cnt[k] > 1 ? sprintf("%.0f–%.0f", lo[k], hi[k]) : "—"), p50[k], p99[k], \
            nonok[k], serr[k], fmt(share[k], 2), (f[1] == "direct" ? "—" : fmt(percore[k], 0)), \
            (f[1] == "direct" ? "—" : rss[k]), c0[k], c1[k], \
            (pinned ? fmt(other(k) > 0 ? other(k) : 0, 0) : "—"), chk[k]
    }
    print ""

    print "## Ratios (same run)\n"
    print "Throughput ratios (req/s), and in brackets the ratio of requests per proxy-core-second (the efficiency, which does not depend on whether core 0 or the proxy was the bottleneck).\n"
    kb = byt["kg-bare", "allowed"]; nb = byt["nginx-bare", "allowed"]; hb = byt["haproxy-bare", "allowed"]
    printf "- keygate bare / nginx bare: %s [%s]\n", fmt(ratio(rps[kb], rps[nb]), 2), fmt(ratio(percore[kb], percore[nb]), 2)
    printf "- keygate bare / HAProxy bare: %s [%s]\n\n", fmt(ratio(rps[kb], rps[hb]), 2), fmt(ratio(percore[kb], percore[hb]), 2)
    kbb = byt["kg-bare-before", "allowed"]
    if (kbb != "") printf "- keygate bare / keygate bare [%s]: %s [%s]\n\n", before, fmt(ratio(rps[byt["kg-bare", "allowed"]], rps[kbb]), 2), fmt(ratio(percore[byt["kg-bare", "allowed"]], percore[kbb]), 2)
    for (i = 1; i <= nc; i++) {
        k = cells[i]; split(k, f, SUBSEP)
        if (f[1] != "kg-before") continue
        kk = "kg" SUBSEP f[2] SUBSEP f[3]
        printf "- keygate job / keygate job [%s], %s orgs, %s: %s [%s]\n", before, f[2], f[3], fmt(ratio(rps[kk], rps[k]), 2), fmt(ratio(percore[kk], percore[k]), 2)
        had_before = 1
    }
    if (had_before) print ""
    print "| orgs | path | keygate / nginx | keygate / HAProxy | keygate job / keygate bare | keygate default runtime / nginx |"
    print "|---:|---|---:|---:|---:|---:|"
    split("allowed 401 429", paths, " ")
    nn = 0; for (n in ns) order[++nn] = n + 0
    for (i = 1; i <= nn; i++) for (j = i + 1; j <= nn; j++) if (order[j] < order[i]) { t = order[i]; order[i] = order[j]; order[j] = t }
    for (i = 1; i <= nn; i++) {
        n = order[i]
        for (p = 1; p <= 3; p++) {
            kk = "kg" SUBSEP n SUBSEP paths[p]; kn = "nginx" SUBSEP n SUBSEP paths[p]
            kh = "haproxy" SUBSEP n SUBSEP paths[p]; km = "kg-multi" SUBSEP n SUBSEP paths[p]
            # keygate bare at the same org count when it took turns there.
            kb = ("kg-bare" SUBSEP n SUBSEP "allowed" SUBSEP "job" in rps) ? "kg-bare" SUBSEP n SUBSEP "allowed" SUBSEP "job" : byt["kg-bare", "allowed"]
            if (!(kk in rps) && !(kn in rps)) continue
            printf "| %s | %s | %s [%s] | %s [%s] | %s [%s] | %s |\n", n, paths[p], \
                fmt(ratio(rps[kk], rps[kn]), 2), fmt(ratio(percore[kk], percore[kn]), 2), \
                fmt(ratio(rps[kk], rps[kh]), 2), fmt(ratio(percore[kk], percore[kh]), 2), \
                (paths[p] == "allowed" ? fmt(ratio(rps[kk], rps[kb]), 2) : "—"), \
                (paths[p] == "allowed" ? fmt(ratio(percore[kk], percore[kb]), 2) : "—"), \
                fmt(ratio(rps[km], rps[kn]), 2)
        }
    }
    print ""

    if (no > 0) {
        printf "## Open loop: %s req/s over %s orgs, allowed path\n\n", orate, on
        print "Fixed request rate (examples/openloop.rs), latency measured from each request'"'"'s intended send time (corrected for coordinated omission). *added* = the target'"'"'s percentile minus the upstream'"'"'s own (direct) at the same rate. Microseconds.\n"
        print "| target | p50 | p90 | p99 | p99.9 | max | added p50 | added p99 | added p99.9 | 2xx / scheduled | errors | unfinished | pacer lag p99 |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= no; i++) {
            t = ot[i]; d = "direct"
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s | %s |\n", label(t), \
                o50[t], o90[t], o99[t], o999[t], omax[t], \
                (t == d || !(d in o50) ? "—" : fmt(o50[t] - o50[d], 1)), \
                (t == d || !(d in o50) ? "—" : fmt(o99[t] - o99[d], 1)), \
                (t == d || !(d in o50) ? "—" : fmt(o999[t] - o999[d], 1)), \
                o2xx[t], osch[t], oerr[t], ounf[t], olag[t]
        }
        print ""
        for (i = 1; i <= no; i++) {
            t = ot[i]
            if (t in oadmin)
                printf "- %s: %d admin mutations answered 2xx during the run, %d not\n", label(t), oadmin_ok[t], oadmin_bad[t]
        }
        print ""
    }

    print "## Start-up and memory\n"
    if (nsu > 0) {
        print "keygate (default runtime), from process start until the proxy port answers HTTP; RSS read 1 s after it answers, idle. The store file is in the page cache (imported just before).\n"
        print "| orgs in store | start-up s | RSS MiB |"
        print "|---:|---:|---:|"
        for (i = 1; i <= nsu; i++) {
            split(su[i], f, SUBSEP)
            printf "| %s | %s | %.1f |\n", f[1], f[2], f[3] / 1024
            if (f[1] == 1) base = f[3]
            else { big = f[1]; bigrss[++nbig] = f[3]; bigst[nbig] = f[2] }
        }
        if (nbig > 0) {
            # medians
            for (i = 1; i <= nbig; i++) for (j = i + 1; j <= nbig; j++) {
                if (bigrss[j] < bigrss[i]) { t = bigrss[i]; bigrss[i] = bigrss[j]; bigrss[j] = t }
                if (bigst[j] < bigst[i]) { t = bigst[i]; bigst[i] = bigst[j]; bigst[j] = t }
            }
            mrss = bigrss[int((nbig + 1) / 2)]; mst = bigst[int((nbig + 1) / 2)]
            per_org = mrss * 1024 / big
            per_org_delta = (base != "") ? (mrss - base) * 1024 / big : ""
            printf "\nWith %d orgs (median of %d): start-up %.2f s, RSS %.1f MiB = %.0f bytes per org", big, nbig, mst, mrss / 1024, per_org
            if (per_org_delta != "") printf " (%.0f bytes per org above keygate with 1 org)", per_org_delta
            print ".\n"
        }
    }
    if (nst > 0) {
        print "Every proxy start of this run (time until the port answered HTTP, RSS then):\n"
        print "| target | orgs | start-up s | RSS MiB | keygate import s |"
        print "|---|---:|---:|---:|---:|"
        for (i = 1; i <= nst; i++) {
            split(stn[i], f, SUBSEP)
            printf "| %s | %s | %s | %s | %s |\n", label(f[1]), f[2], st[f[1], f[2]], strss[f[1], f[2]], \
                (f[1] ~ /^kg/ && (f[2] in imp) ? imp[f[2]] : "")
        }
        print ""
    }

    if (rot != "") {
        printf "## Rotation under load (keygate, %s runtime)\n\n", rotw
        print "examples/rotation.rs: keep-alive connections send requests round-robin over a set of orgs with each org'"'"'s current key (every 4th request deliberately with the org'"'"'s previous key, once it has one) while one org'"'"'s key is regenerated through the admin API every period. *current_refused*: requests refused although their key was current from before they were sent until after their answer (goal 0). *replaced_accepted*: requests accepted although their key had been replaced (regenerate answered 2xx) before they were sent (must be 0). *in_flight*: sent before a regenerate answered and answered after it was sent; either answer is allowed.\n"
        print "```"
        gsub(/ rotation /, "\nrotation ", rot)
        print rot
        print "```"
        printf "\nexit status %s (0: both counts are 0)\n\n", rotrc
        split(rot, words, /[ \n]/)
        for (w in words) { split(words[w], kvp, "="); rv[kvp[1]] = kvp[2] }
    }

    if (nins > 0) {
        printf "## Instructions per request (callgrind, %s orgs, %s upstream)\n\n", ins_n, (scheme == "https" ? "HTTPS" : "plain HTTP")
        print "Each proxy under valgrind'"'"'s callgrind, same topology and wrk settings: user-space instructions of all its processes per request answered, over INSTR_SECS of load after a warm-up. A count, not a time, so it does not drift with the machine; it leaves out the kernel (the same system calls per request for every proxy here: BENCHMARKS.md). Lower is better.\n"
        if (ins_rounds > 1) printf "Each target counted %d times, the targets taking turns: the median (of an even number, the lower middle one), and in brackets the lowest and highest count.\n\n", ins_rounds
        if (ins_has_conn) {
            print "Before the count, the load runs in rounds of 2 s until the proxy has opened as many upstream connections as wrk has, or 3 rounds in a row (INSTR_WARM_QUIET) opened none (at most INSTR_WARM_MAX), so the count is the steady state with the proxy'"'"'s upstream connections open; *upstream connections opened* are those opened (for HTTPS: handshakes) during the count all the same, and *warm-up s* how long the warm-up took (allowed path).\n"
            print "| target | allowed | 401 | requests counted (allowed) | upstream connections opened (allowed) | warm-up s (allowed) |"
            print "|---|---:|---:|---:|---:|---:|"
        } else {
            print "| target | allowed | 401 | requests counted (allowed) |"
            print "|---|---:|---:|---:|"
        }
        for (i = 1; i <= nins; i++) {
            t = ins_t[i]
            printf "| %s | %s%s | %s%s | %s |", label(t), fmt(ins[t, "allowed"], 0), irange(t, "allowed"), fmt(ins[t, "401"], 0), irange(t, "401"), ins_req[t, "allowed"]
            if (ins_has_conn) printf " %s | %s |", ins_conn[t, "allowed"], ins_warm[t, "allowed"]
            print ""
        }
        print ""
        # Counts that were not the steady state all the same: say which.
        nchurn = 0
        for (i = 1; i <= nins; i++) for (pi = 1; pi <= 2; pi++) {
            t = ins_t[i]; p = (pi == 1 ? "allowed" : "401")
            for (a = 1; a <= ins_cnt[t, p]; a++) if (ins_c[t, p, a] + 0 > 0) {
                if (!nchurn++) print "Counts during which the proxy opened upstream connections (not the steady state; the median above leaves them out when it can):\n"
                printf "- %s, %s, round %d: %d connections opened, %.0f instructions per request\n", label(t), p, a, ins_c[t, p, a], ins_v[t, p, a]
            }
        }
        if (nchurn) print ""
        print "Ratios of instructions (keygate / peer; below 1.00 keygate does the same work with fewer):\n"
        printf "- keygate job / nginx job: allowed %s, 401 %s\n", fmt(ratio(ins["kg", "allowed"], ins["nginx", "allowed"]), 2), fmt(ratio(ins["kg", "401"], ins["nginx", "401"]), 2)
        printf "- keygate job / HAProxy job: allowed %s, 401 %s\n", fmt(ratio(ins["kg", "allowed"], ins["haproxy", "allowed"]), 2), fmt(ratio(ins["kg", "401"], ins["haproxy", "401"]), 2)
        printf "- keygate bare / nginx bare: %s; keygate bare / HAProxy bare: %s\n", fmt(ratio(ins["kg-bare", "allowed"], ins["nginx-bare", "allowed"]), 2), fmt(ratio(ins["kg-bare", "allowed"], ins["haproxy-bare", "allowed"]), 2)
        printf "- keygate job / keygate bare: %s (the gate'"'"'s share: %s instructions per request)\n\n", fmt(ratio(ins["kg", "allowed"], ins["kg-bare", "allowed"]), 2), ((("kg", "allowed") in ins_cnt && ("kg-bare", "allowed") in ins_cnt) ? fmt(ins["kg", "allowed"] - ins["kg-bare", "allowed"], 0) : "—")
        if (("kg-before", "allowed") in ins_cnt || ("kg-bare-before", "allowed") in ins_cnt) {
            printf "This build against *[%s]* (KG_BEFORE_BIN), instructions per request (above 1.00 this build does more):\n\n", before
            printf "- keygate job / keygate job [%s]: allowed %s, 401 %s\n", before, fmt(ratio(ins["kg", "allowed"], ins["kg-before", "allowed"]), 3), fmt(ratio(ins["kg", "401"], ins["kg-before", "401"]), 3)
            printf "- keygate bare / keygate bare [%s]: allowed %s\n\n", before, fmt(ratio(ins["kg-bare", "allowed"], ins["kg-bare-before", "allowed"]), 3)
        }
    }

    # Only the instructions stage ran: no goal of the table below was measured.
    if (nc == 0 && no == 0 && nsu == 0 && rot == "") exit
    print "## The issue'"'"'s goals\n"
    gn = ("100000" in ns) ? 100000 : order[nn]
    kk = "kg" SUBSEP gn SUBSEP "allowed"; kn = "nginx" SUBSEP gn SUBSEP "allowed"; kh = "haproxy" SUBSEP gn SUBSEP "allowed"
    print "Throughput goals show the req/s ratio of the median rounds, in brackets the ratio of requests per proxy-core-second, and the lowest and highest ratio of one round to the same round of the other target, measured within a minute or so of each other.\n"
    print "| goal | measured | verdict |"
    print "|---|---:|---|"
    r = ratio(rps[kk], rps[kn]); printf "| keygate job >= 1.15x nginx job, %s orgs | %s | %s |\n", gn, fmt(r, 2) " [" fmt(ratio(percore[kk], percore[kn]), 2) "]" spread(kk, kn), verdict(r >= 1.15, r != "") noise(kk, kn)
    r = ratio(rps[kk], rps[kh]); printf "| keygate job >= 2x HAProxy job, %s orgs | %s | %s |\n", gn, fmt(r, 2) " [" fmt(ratio(percore[kk], percore[kh]), 2) "]" spread(kk, kh), verdict(r >= 2, r != "") noise(kk, kh)
    kb = ("kg-bare" SUBSEP gn SUBSEP "allowed" SUBSEP "job" in rps) ? "kg-bare" SUBSEP gn SUBSEP "allowed" SUBSEP "job" : byt["kg-bare", "allowed"]
    r = ratio(rps[kk], rps[kb]); printf "| keygate job >= 0.95x keygate bare, %s orgs | %s | %s |\n", gn, fmt(r, 2) " [" fmt(ratio(percore[kk], percore[kb]), 2) "]" spread(kk, kb), verdict(r >= 0.95, r != "") noise(kk, kb)
    kb = byt["kg-bare", "allowed"]
    r = ratio(rps[kb], rps[nb]); printf "| keygate bare >= 1.0x nginx bare | %s | %s |\n", fmt(r, 2) " [" fmt(ratio(percore[kb], percore[nb]), 2) "]" spread(kb, nb), verdict(r >= 1.0, r != "") noise(kb, nb)
    r = ("kg" in o99 && "direct" in o99) ? o99["kg"] - o99["direct"] : ""
    printf "| keygate added p99 <= 100 us at 50%% of nginx capacity | %s us | %s |\n", fmt(r, 1), verdict(r != "" && r <= 100, r != "") \
        ((olag["kg"] > 500 || olag["direct"] > 500) ? " (noisy: the pacer ran late, p99 over 500 us)" : "")
    r = (nbig > 0 && big == 1000000) ? per_org : ""
    printf "| <= 256 bytes of RSS per org at 1,000,000 orgs | %s | %s |\n", fmt(r, 0), verdict(r != "" && r <= 256, r != "")
    r = (nbig > 0 && big == 1000000) ? mst : ""
    printf "| start-up with 1,000,000 orgs < 3 s | %s s | %s |\n", fmt(r, 2), verdict(r != "" && r < 3, r != "")
    r = rv["current_refused"]
    printf "| rotation: requests refused with the then-current key = 0 | %s | %s |\n", (r == "" ? "—" : r), verdict(r == 0, r != "")
    r = rv["replaced_accepted"]
    printf "| rotation: requests accepted with an already replaced key = 0 | %s | %s |\n", (r == "" ? "—" : r), verdict(r == 0, r != "")
}
' "$RAW" "$RAW"
