"""Kestra's published API client (`kestrapy`) against our server, unchanged but for the base URL
and the credentials: create a flow from YAML, trigger an execution with a text input and a file,
follow it (server-sent events) to its end, read its logs, download its output file.

Usage: python kestrapy_roundtrip.py BASE_URL USERNAME PASSWORD NAMESPACE
Prints one `ok: ...` line per step; exits non-zero with the failing step on stderr.
"""

import sys
import traceback

from kestrapy import KestraClient

TENANT = "main"
TERMINAL = {"SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED", "SKIPPED"}


def state_of(execution):
    state = execution.state.current
    return getattr(state, "value", state)


def main():
    base_url, username, password, namespace = sys.argv[1:5]
    client = KestraClient(host=base_url, username=username, password=password, timeout=60)
    step = "create the flow"
    try:
        source = f"""id: shout
namespace: {namespace}
inputs:
  - id: name
    type: STRING
  - id: data
    type: FILE
tasks:
  - id: upper
    type: io.kestra.plugin.scripts.shell.Commands
    inputFiles:
      in.txt: "{{{{ read(inputs.data) }}}}"
    outputFiles:
      - out.txt
    commands:
      - tr a-z A-Z < in.txt > out.txt
      - echo "hello {{{{ inputs.name }}}} from the client"
"""
        flow = client.flows.create_flow(tenant=TENANT, body=source)
        assert flow.id == "shout" and flow.namespace == namespace, flow
        print(f"ok: created flow {flow.namespace}.{flow.id} revision {flow.revision}")

        step = "trigger an execution with inputs and a file"
        created = client.executions.create_execution(
            tenant=TENANT,
            namespace=namespace,
            id="shout",
            inputs={"name": "kestrapy", "data": ("data.txt", b"some text\n")},
        )
        execution_id = created.id
        assert execution_id, created
        print(f"ok: created execution {execution_id}")

        step = "follow the execution"
        last = None
        for event in client.executions.follow_execution(execution_id, TENANT):
            if event is None:
                continue
            last = state_of(event)
            if last in TERMINAL:
                break
        assert last == "SUCCESS", f"followed to {last}"
        print(f"ok: followed to {last}")

        step = "get the execution"
        execution = client.executions.execution(execution_id, TENANT)
        assert state_of(execution) == "SUCCESS", execution
        run = next(r for r in execution.task_run_list if r.task_id == "upper")
        # kestrapy's TaskRun model has no `outputs` field: the execution's JSON carries them (as
        # Kestra's does) and the model keeps them in `additional_properties`.
        outputs = run.additional_properties.get("outputs") or {}
        uri = outputs["outputFiles"]["out.txt"]
        print(f"ok: output file {uri}")

        step = "read the logs"
        logs = client.logs.list_logs_from_execution(execution_id, TENANT)
        messages = [log.message for log in logs]
        assert any("hello kestrapy from the client" in m for m in messages), messages
        print(f"ok: {len(logs)} log lines")

        step = "download the output file"
        content = client.executions.download_file_from_execution(execution_id, uri, TENANT)
        assert content == b"SOME TEXT\n", content
        print("ok: downloaded the output file")
    except Exception:  # noqa: BLE001 - the step and the full error are the test's message
        print(f"FAILED to {step}:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
