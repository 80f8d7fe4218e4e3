# The task container's command (bash as PID 1, root); the agent's diff arrives on stdin.
# grader/container.py fills in the time limit and the two Python files (check.py, launch.py).
#
# Order matters. Everything that runs an image binary (git, cp, the checks) runs before any code
# of the agent's. After the tests, every other process is killed before a file is read, reads
# are bounded builtins, and the last thing written is the frame grader/container.py parses from
# the end of the output:
#   <log tail><summary><findings>\n@@RLM frame status=.. exit=.. start=.. end=.. log=N summary=N tamper=N\n
set -u
export LC_ALL=C
W=/tmp/.rlm-grader
LOG_TAIL=65536
SUMMARY_MAX=8388608
START=0 END=0

sweep() {  # SIGKILL every process but this one (PID 1), as long as any is left
    local pid left
    for _ in 1 2 3 4 5 6 7 8; do
        left=0
        for pid in /proc/[0-9]*; do
            pid=${pid#/proc/}
            [ "$pid" = 1 ] || [ "$pid" = "$BASHPID" ] || { kill -9 "$pid" 2>/dev/null && left=1; }
        done
        [ "$left" = 0 ] && return
    done
}

slurp() {  # slurp VAR FILE MAX: at most MAX bytes of a regular file (never a FIFO or a link)
    local -n into=$1
    into=""
    if [ -f "$2" ] && [ ! -L "$2" ]; then
        IFS= read -r -d '' -N "$3" into < "$2" || true
    fi
}

frame() {  # frame STATUS EXIT
    local log="" summary="" tamper="" found=""
    slurp log "$W/tests.tail" "$LOG_TAIL"
    slurp summary "$W/summary" $((SUMMARY_MAX + 1))
    slurp tamper "$W/tamper" 65536
    slurp found "$W/found" 65536  # launch.py's findings (fd 4)
    tamper+=$found
    if [ "${#summary}" -gt "$SUMMARY_MAX" ]; then
        summary=""
        tamper+="oversized test summary: fd 3"$'\n'
    fi
    printf '%s%s%s\n@@RLM frame status=%s exit=%s start=%s end=%s log=%d summary=%d tamper=%d\n' \
        "$log" "$summary" "$tamper" "$1" "$2" "$START" "$END" "${#log}" "${#summary}" "${#tamper}"
    exit 0
}

mkdir -p "$W/pristine" || exit 98
cd /testbed 2>/dev/null || { echo "no /testbed" > "$W/tests.tail"; frame no_testbed 97; }
cat > "$W/agent.diff"
cat > "$W/check.py" <<'RLM_CHECK_PY_EOF'
@@CHECK@@
RLM_CHECK_PY_EOF
cat > "$W/launch.py" <<'RLM_LAUNCH_PY_EOF'
@@LAUNCH@@
RLM_LAUNCH_PY_EOF

# The image's own test-runner inputs, to put back after the diff whatever it did to them.
RESTORED="run_tests.sh conftest.py pytest.ini .pytest.ini pyproject.toml setup.cfg tox.ini"
for name in $RESTORED; do
    [ -e "$name" ] || [ -L "$name" ] && cp -a "$name" "$W/pristine/$name"
done
read -r PY _ < "$W/pristine/run_tests.sh" 2>/dev/null || PY=.venv/bin/python
[ -x "$PY" ] || { echo "run_tests.sh's interpreter $PY is missing" > "$W/tests.tail"; frame bad_runner 96; }

"$PY" -I -S "$W/check.py" pre "$W" > "$W/tamper" 2>&1
case $? in
    0) ;;
    3) mv "$W/tamper" "$W/tests.tail"; frame patch_failed 90 ;;
    4) mv "$W/tamper" "$W/tests.tail"; frame bad_runner 96 ;;
    *) mv "$W/tamper" "$W/tests.tail"; frame check_failed 95 ;;
esac
[ -s "$W/tamper" ] && frame tampered 0  # nothing of a tampering diff is applied or run
if [ -s "$W/agent.diff" ] && ! git apply --whitespace=nowarn "$W/agent.diff" > "$W/tests.tail" 2>&1; then
    frame patch_failed 90
fi
"$PY" -I -S "$W/check.py" post "$W" >> "$W/tamper" 2>&1 || frame check_failed 95
[ -s "$W/tamper" ] && frame tampered 0

for name in $RESTORED; do
    rm -rf "$name"
    [ -e "$W/pristine/$name" ] || [ -L "$W/pristine/$name" ] && cp -a "$W/pristine/$name" "$name"
done
rm -rf r2e_tests && cp -r /r2e_tests r2e_tests
mapfile -d '' RUNNER < "$W/runner"
mapfile -d '' ARGS < "$W/args"

START=$EPOCHREALTIME
(
    ulimit -f 131072  # 128 MiB of log: a module printing forever fails, the disk stays whole
    exec timeout -s KILL @@TIMEOUT@@ "${RUNNER[0]}" -S "${RUNNER[@]:1}" "$W/launch.py" "$W" "${ARGS[@]}"
) > "$W/tests.log" 2>&1 3> "$W/summary" 4> "$W/found" < /dev/null
CODE=$?
END=$EPOCHREALTIME
sweep
# The log's tail through the image's `tail`, read bounded: a replaced binary only spoils the log.
IFS= read -r -d '' -N "$LOG_TAIL" TAIL < <(tail -c "$LOG_TAIL" "$W/tests.log" 2>/dev/null) || true
sweep
printf '%s' "$TAIL" > "$W/tests.tail"
frame ran "$CODE"
