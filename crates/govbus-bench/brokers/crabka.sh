#!/usr/bin/env bash
# A second Kafka-protocol broker for the latency bench, beside nisshi:
# crabka-broker 0.3.0 (Apache-2.0, a single-node broker with a Kafka-style
# segment log and offset index), built from its crates on crates.io.
#
# Why: nisshi's memory storage lists every batch of a partition on each
# fetch, so its CPU and the latency grow for as long as a run lasts
# (docs/BENCHMARKS.md). crabka finds a fetch offset in an index, as Kafka
# does, so a run on it shows what the bus itself costs over a long run.
# It is for benchmarks only; the test suite and `govbus up` use nisshi.
#
#   crates/govbus-bench/brokers/crabka.sh build        # once, ≈ 20 min on 2 cores
#   crates/govbus-bench/brokers/crabka.sh start 19092  # foreground; Ctrl-C stops
#   GOVBUS_KAFKA_BOOTSTRAP=127.0.0.1:19092 target/release/govbus-bench latency ...
#
# The crabka 0.3.x crates are yanked (the project was renamed and its
# successor is not on crates.io), so they are fetched by exact version from
# crates.io's download host, checked against the index's SHA-256, and
# wired together with [patch.crates-io]. Three changes are applied, each
# where crabka 0.3.0 differs from Apache Kafka in a way librdkafka notices:
#   1. a Fetch response with no records carried a null records field;
#      Kafka sends an empty one, and librdkafka rejects null
#      ("invalid MessageSetSize -1");
#   2. transaction.version 2 (KIP-890: the epoch bumped on every EndTxn)
#      was applied whatever the client's EndTxn version; librdkafka 2.12 does
#      not speak it and was fenced on its second transaction. Kafka applies
#      it only to clients that ask; here it is treated as version 1;
#   3. accepted sockets had Nagle's algorithm on; Kafka sets TCP_NODELAY.
#      With it on, every produce with acks=all took ≈ 40 ms (Nagle against
#      the client's delayed ACK).
set -euo pipefail

VER=0.3.0
ROOT=${GOVBUS_CACHE:-$HOME/.cache/govbus}/crabka-$VER
SRC=$ROOT/src
BIN=$ROOT/build/release/crabka-broker
CRATES="crabka-broker crabka-telemetry crabka-security crabka-remote-storage-topic
crabka-remote-storage crabka-protocol crabka-compression crabka-client-producer
crabka-client-core crabka-client-consumer crabka-client-admin crabka-metadata
crabka-records-legacy crabka-raft crabka-log crabka-authz"

fetch() {
    mkdir -p "$SRC"
    for c in $CRATES; do
        [ -d "$SRC/$c-$VER" ] && continue
        python3 - "$c" "$VER" "$SRC" <<'EOF'
import hashlib, io, json, sys, tarfile, urllib.request
name, ver, dest = sys.argv[1:]
p = f"{name[:2]}/{name[2:4]}/{name}"
entry = next(json.loads(l) for l in urllib.request.urlopen(f"https://index.crates.io/{p}")
             .read().decode().splitlines() if json.loads(l)["vers"] == ver)
data = urllib.request.urlopen(f"https://static.crates.io/crates/{name}/{name}-{ver}.crate").read()
if hashlib.sha256(data).hexdigest() != entry["cksum"]:
    sys.exit(f"{name} {ver}: checksum does not match the crates.io index")
tarfile.open(fileobj=io.BytesIO(data)).extractall(dest)
print(f"fetched {name} {ver}")
EOF
    done
}

patch_sources() {
    python3 - "$SRC" "$VER" <<'EOF'
import pathlib, sys
src, ver = pathlib.Path(sys.argv[1]), sys.argv[2]

def edit(path, old, new):
    p = src / path
    s = p.read_text()
    if new in s:
        return
    if s.count(old) != 1:
        sys.exit(f"{path}: the text to patch is not there once")
    p.write_text(s.replace(old, new))
    print(f"patched {path}")

# 1. empty, not null, records in a Fetch response
for f in ["generated/FetchResponse.owned.rs", "generated/kafka_3_6_2/FetchResponse.owned.rs"]:
    edit(f"crabka-protocol-{ver}/{f}",
         "None => {\n                    if flex {\n                        put_compact_nullable_bytes(buf, None);\n"
         "                    } else {\n                        put_nullable_bytes(buf, None);\n",
         "None => {\n                    if flex {\n                        put_compact_bytes(buf, &[]);\n"
         "                    } else {\n                        put_bytes(buf, &[]);\n")
# 2. transaction.version 2 treated as 1
edit(f"crabka-broker-{ver}/src/txn/version.rs",
     "Some(2) => TxnVersion::Verified,",
     "Some(2) => TxnVersion::Flexible, // govbus: librdkafka 2.12 does not speak KIP-890")
# 3. TCP_NODELAY on accepted connections
edit(f"crabka-broker-{ver}/src/broker.rs",
     '"accepted connection");\n',
     '"accepted connection");\n                        let _ = stream.set_nodelay(true); // govbus: as Kafka\n')

toml = src / f"crabka-broker-{ver}" / "Cargo.toml"
s = toml.read_text()
if "[patch.crates-io]" not in s:
    lines = ["", "[patch.crates-io]"]
    for d in sorted(src.iterdir()):
        name = d.name[: -len(ver) - 1]
        if name != "crabka-broker":
            lines.append(f'{name} = {{ path = "../{d.name}" }}')
    toml.write_text(s + "\n".join(lines) + "\n")
EOF
}

case "${1:-}" in
build)
    fetch
    patch_sources
    (cd "$SRC/crabka-broker-$VER" &&
        cargo build --release --bin crabka-broker --target-dir "$ROOT/build")
    echo "built $BIN"
    ;;
start)
    port=${2:-19092}
    [ -x "$BIN" ] || { echo "$BIN is missing: run '$0 build' first" >&2; exit 1; }
    data=$(mktemp -d /tmp/crabka-data.XXXXXX)
    cluster=$(python3 -c 'import uuid; print(uuid.uuid4())')
    # What `crabka format` would write: a fresh single-node cluster.
    printf '{"cluster_id":"%s","directory_id":"%s","node_id":1,"version":1}\n' \
        "$cluster" "$(python3 -c 'import uuid; print(uuid.uuid4())')" \
        > "$data/meta.properties.json"
    echo "crabka on 127.0.0.1:$port, data in $data (pid $$)"
    RUST_LOG=${RUST_LOG:-warn} CRABKA_CLUSTER_ID=$cluster exec "$BIN" \
        --listen-addr "127.0.0.1:$port" --log-dir "$data" --metrics-listen-addr none
    ;;
*)
    echo "usage: $0 build | start [PORT]" >&2
    exit 2
    ;;
esac
