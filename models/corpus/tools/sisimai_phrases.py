#!/usr/bin/env python3
"""Extract the provider/MTA wording that Debian's Sisimai 4.25 (libsisimai-perl, BSD-2-Clause) lists in its
Reason/*.pm phrase indexes and Rhost/*.pm message tables, as seed rows of models/corpus/diagnostics.jsonl.

Sisimai 4 names are mapped onto design.md's December-2025 taxonomy (toomanyconn/speeding -> ratelimited,
mesgtoobig/exceedlimit -> emailtoolarge; 'blocked' phrases about PTR, SPF/DKIM/DMARC, reputation split the way
Sisimai 5 split them). Deterministic: the output depends only on the installed Sisimai files.

usage: python3 models/corpus/tools/sisimai_phrases.py /usr/share/perl5/Sisimai > /tmp/sisimai.jsonl
"""
import json, os, re, sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/perl5/Sisimai"
RENAME = {"toomanyconn": "ratelimited", "speeding": "ratelimited", "mesgtoobig": "emailtoolarge",
          "exceedlimit": "emailtoolarge"}
STR = re.compile(r"""^\s*(?:\[\s*'?(\d{3})'?\s*,\s*(?:'([245]\.\d\.\d+)'\s*,\s*)?)?(['"])(.*?)\3\s*\]?\s*,?\s*(?:#.*)?$""")

def relabel(reason, text):
    t = text.lower()
    reason = RENAME.get(reason, reason)
    if "bounced address" in t or "suppression list" in t:
        return "suppressed"
    if reason in ("blocked", "rejected", "securityerror", "policyviolation"):
        if re.search(r"\bptr\b|reverse dns|rdns|reverse lookup|no dns entry|reverse address", t):
            return "requireptr"
        if re.search(r"\bdmarc\b|\bspf\b|\bdkim\b|authentication checks|unauthenticated", t):
            return "authfailure"
        if "reputation" in t:
            return "badreputation"
    return reason

def rows_of_reason(path):
    name = os.path.basename(path)[:-3].lower()
    out, inlist = [], False
    for line in open(path, encoding="utf-8", errors="replace"):
        if re.match(r"\s*state \$index\s*=\s*\[", line) or re.match(r"\s*my \$index\s*=\s*\[", line):
            inlist = True
            continue
        if inlist:
            if re.match(r"\s*\];", line):
                inlist = False
                continue
            m = STR.match(line)
            if m and len(m.group(4)) >= 6:
                out.append((name, None, None, m.group(4), "Reason/%s.pm" % os.path.basename(path)[:-3]))
    return out

def rows_of_rhost(path):
    out, reason = [], None
    for line in open(path, encoding="utf-8", errors="replace"):
        m = re.match(r"\s*'([a-z]+)'\s*=>\s*\[", line)
        if m:
            reason = m.group(1)
            continue
        if reason is None:
            continue
        m = STR.match(line)
        if m and m.group(4) and len(m.group(4)) >= 6 and not line.strip().startswith("#"):
            out.append((reason, m.group(1), m.group(2), m.group(4), "Rhost/%s.pm" % os.path.basename(path)[:-3]))
    return out

rows = []
for f in sorted(os.listdir(os.path.join(ROOT, "Reason"))):
    rows += rows_of_reason(os.path.join(ROOT, "Reason", f))
for f in sorted(os.listdir(os.path.join(ROOT, "Rhost"))):
    rows += rows_of_rhost(os.path.join(ROOT, "Rhost", f))
seen = set()
for reason, reply, status, text, src in rows:
    reason = relabel(reason, text)
    if reason in ("undefined", "delivered", "feedback", "vacation", "onhold") or (reason, text) in seen:
        continue
    seen.add((reason, text))
    print(json.dumps({"text": text, "status": status, "reply_code": int(reply) if reply else None,
                      "reason": reason, "source": "sisimai-4.25 %s (BSD-2-Clause)" % src}, ensure_ascii=False))
