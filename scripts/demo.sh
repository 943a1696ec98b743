#!/usr/bin/env bash
# The main job: a local federation on loopback — one coordinator and three bank workers, each
# holding its own partition of the Telco churn data (../shared/datasets/telco_churn) — trains
# the churn MLP of examples/local_federation/churn_job.toml with secure aggregation over mutual
# TLS, printing each round's federated metrics and the final test AUC; then writes the job's
# report (markdown + PNG), exports the model (ONNX, TorchScript, safetensors, model card) and
# scores bank1's raw test rows with the ONNX file in onnxruntime and in the Rust serving example.
#
# Installs libtorch into .venv on first use, builds, and cleans up its processes on exit.
# Everything it writes goes to .data/demo (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --workspace --bins
bin=target/debug
demo=.data/demo
data=../shared/datasets/telco_churn/WA_Fn-UseC_-Telco-Customer-Churn.csv
if [ ! -f "$data" ]; then
  echo "demo: $data not found: the shared datasets must sit beside the repository (../shared)" >&2
  exit 1
fi

rm -rf "$demo"
mkdir -p "$demo"
"$bin/confide-partition" --input "$data" --schema datasets/schemas/telco_churn.toml \
  --out "$demo/partitions" --institutions 3 --scheme iid --seed 42

# The federation's PKI: a CA, the coordinator's certificate, one per bank, one for the analyst.
pki="$demo/pki"
"$bin/confide" certs init --dir "$pki" >/dev/null
"$bin/confide" certs issue --ca-dir "$pki" --role coordinator --name coordinator \
  --san 127.0.0.1 --san localhost --out "$pki" >/dev/null
for bank in bank1 bank2 bank3; do
  "$bin/confide" certs issue --ca-dir "$pki" --role institution --name "$bank" --out "$pki" >/dev/null
done
"$bin/confide" certs issue --ca-dir "$pki" --role admin --name analyst --out "$pki" >/dev/null
echo "demo: federation PKI in $pki (CA, coordinator, bank1-3, admin 'analyst')"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Port 0: the coordinator picks a free port and writes it to a file.
"$bin/confide-coordinator" --config examples/local_federation/coordinator.toml \
  --listen 127.0.0.1:0 --addr-file "$demo/coordinator.addr" >"$demo/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$demo/coordinator.addr" ] && break; sleep 0.1; done
url="https://$(cat "$demo/coordinator.addr")"
echo "demo: coordinator at $url (log: $demo/coordinator.log)"

for bank in bank1 bank2 bank3; do
  "$bin/confide-worker" --config "examples/local_federation/$bank.toml" --coordinator "$url" \
    >"$demo/$bank.log" 2>&1 &
  pids+=($!)
done
echo "demo: workers bank1, bank2, bank3 started (logs: $demo/bank*.log)"

export CONFIDE_COORDINATOR="$url" CONFIDE_CA="$pki/ca.pem" CONFIDE_CERT="$pki/analyst.pem" CONFIDE_KEY="$pki/analyst.key"
# CONFIDE_DEMO_JOB picks another job file, e.g. the same model with differential privacy:
# CONFIDE_DEMO_JOB=examples/local_federation/churn_job_dp.toml bash scripts/demo.sh
job=$("$bin/confide" job submit "${CONFIDE_DEMO_JOB:-examples/local_federation/churn_job.toml}")
echo "demo: submitted job $job"
"$bin/confide" job watch "$job"
"$bin/confide" job get "$job" --json >"$demo/job.json"
echo "demo: the job as JSON is in $demo/job.json"

# What the data-science team does next: the report, the export, and scoring raw rows with the
# exported ONNX file in onnxruntime and in the pure-Rust serving example.
"$bin/confide" job report "$job" -o "$demo/report" >/dev/null
echo "demo: report in $demo/report (report.md, metrics.png, rounds.csv)"
"$bin/confide" model export "$job" --format all -o "$demo/export" >/dev/null
echo "demo: exported to $demo/export (model.onnx, model.pt, model.safetensors, model_card.md)"
rows=.data/demo/partitions/bank1/test.csv
.venv/bin/python examples/serving/score_onnxruntime.py "$demo/export/model.onnx" "$rows" \
  "$demo/scores_onnxruntime.csv" --id-column customerID
"$bin/confide-score" "$demo/export/model.onnx" "$rows" --id-column customerID -o "$demo/scores_tract.csv"
.venv/bin/python - "$demo/scores_onnxruntime.csv" "$demo/scores_tract.csv" <<'PY'
import csv, sys
a, b = ([float(r["probability"]) for r in csv.DictReader(open(p))] for p in sys.argv[1:3])
print(f"demo: scored {len(a)} raw rows of bank1's test split; onnxruntime vs confide-score "
      f"(tract) max abs difference {max(abs(x - y) for x, y in zip(a, b)):.2e}")
PY
