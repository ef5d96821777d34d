"""Python SDK client of the end-to-end harness.

Runs inside a FROM-scratch container built from Debian's python3.11 and
python3-boto3, and gets credentials as an unmodified workload would: boto3's
default credential chain, which ends at InstanceMetadataProvider (IMDSv2 at
169.254.169.254, or AWS_EC2_METADATA_SERVICE_ENDPOINT, which botocore reads
itself). It never prints secrets or session tokens.

Usage:
    client.py [whoami]            one GetCallerIdentity
    client.py loop N INTERVAL     N attempts INTERVAL seconds apart, one session

Environment: STS_ENDPOINT (STS endpoint_url), AWS_DEFAULT_REGION (botocore
does not read AWS_REGION). Exit status 0 when every call succeeded, 1
otherwise, 2 on bad usage.
"""

import datetime
import json
import os
import sys
import time

import boto3
import botocore.config

CALL_TIMEOUT = 5  # seconds; bounds every STS call so failures are quick


def parse_interval(text):
    """Accept "2", "2s", "500ms" (the Go client's duration style)."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    if text.endswith("s"):
        return float(text[:-1])
    return float(text)


def expiration_of(creds):
    # RefreshableCredentials keeps the expiry botocore itself believes in,
    # which after its "expiration extension" can differ from what IMDS said.
    expiry = getattr(creds, "_expiry_time", None)
    if expiry is None:
        return None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=datetime.timezone.utc)
    return expiry.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def attempt(session, client, number):
    res = {"sdk": "python", "attempt": number}
    try:
        out = client.get_caller_identity()
        res["arn"] = out["Arn"]
    except Exception as exc:  # any failure is reported, never raised
        res["error"] = "%s: %s" % (type(exc).__name__, exc)
    creds = session.get_credentials()
    if creds is not None:
        # access_key is a property that may refresh; the call above just
        # refreshed if needed, so this reads the key it signed with.
        res["access_key_id_prefix"] = (creds.access_key or "")[:8]
        exp = expiration_of(creds)
        if exp:
            res["expiration"] = exp
    print(json.dumps(res), flush=True)
    return "error" not in res


def main(argv):
    mode = argv[0] if argv else "whoami"
    if mode == "whoami":
        count, interval = 1, 0.0
    elif mode == "loop" and len(argv) == 3:
        try:
            count, interval = int(argv[1]), parse_interval(argv[2])
        except ValueError:
            count = 0
        if not 1 <= count <= 1000 or not 0 <= interval <= 3600:
            print("client.py: loop N INTERVAL: N 1..1000, INTERVAL 0..3600s", file=sys.stderr)
            return 2
    else:
        print("usage: client.py [whoami | loop N INTERVAL]", file=sys.stderr)
        return 2

    session = boto3.session.Session()
    cfg = botocore.config.Config(
        connect_timeout=CALL_TIMEOUT,
        read_timeout=CALL_TIMEOUT,
        retries={"max_attempts": 1},
    )
    client = session.client("sts", endpoint_url=os.environ.get("STS_ENDPOINT") or None, config=cfg)
    ok = True
    for i in range(1, count + 1):
        if i > 1:
            time.sleep(interval)
        ok = attempt(session, client, i) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
