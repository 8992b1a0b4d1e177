#!/usr/bin/env python3
"""consentd's user scenarios through a Python client generated from proto/.

Generates the stubs with grpcio-tools into a temporary directory (nothing
generated is committed), starts the consentd binary on a free port with a
temporary data directory, runs the scenarios, and stops the server.

    clients/python/.venv/bin/python clients/python/test_scenarios.py [CONSENTD_BINARY]

The binary defaults to $CONSENTD_BIN, then target/debug/consentd.
`cargo test --test it -- --ignored python_client` runs this with the binary
cargo built.
Exits non-zero on the first failed check.
"""

import glob
import os
import re
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO = os.path.join(ROOT, "proto")
START_TIMEOUT_S = 60
# A 10,000-decision answer is about 0.5 MB; grpc's default limit is 4 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def generate_stubs(out_dir):
    """Runs the same protoc command as docs/clients.md, into out_dir."""
    protos = sorted(glob.glob(os.path.join(PROTO, "consent", "v1", "*.proto")))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", PROTO,
         "--python_out", out_dir, "--grpc_python_out", out_dir, *protos],
        check=True,
    )
    sys.path.insert(0, out_dir)


class Server:
    """`consentd serve` on 127.0.0.1:0 with a temporary data directory."""

    def __init__(self, binary, data_dir):
        self.process = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"}, text=True,
        )
        self.log = []
        listening = threading.Event()
        self.address = None

        def read():
            for line in self.process.stderr:
                self.log.append(line)
                found = re.search(r"listening on (\S+)", line)
                if found and not listening.is_set():
                    self.address = found.group(1)
                    listening.set()
            listening.set()

        threading.Thread(target=read, daemon=True).start()
        if not listening.wait(START_TIMEOUT_S) or self.address is None:
            self.stop()
            raise RuntimeError("consentd did not start:\n" + "".join(self.log))

    def stop(self):
        self.process.terminate()
        code = self.process.wait(timeout=START_TIMEOUT_S)
        if code != 0:
            raise RuntimeError(f"consentd exited with {code}:\n" + "".join(self.log))


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def hard_bounce_quarantines_both(channel):
    """The shared address hard-bounces: quarantine excludes Bob too."""
    from consent.v1 import common_pb2, eligibility_pb2, quarantine_pb2
    from consent.v1 import eligibility_pb2_grpc, quarantine_pb2_grpc

    quarantine = quarantine_pb2_grpc.QuarantineServiceStub(channel)
    eligibility = eligibility_pb2_grpc.EligibilityServiceStub(channel)
    recorded = quarantine.RecordDeliveryFeedback(quarantine_pb2.RecordDeliveryFeedbackRequest(
        tenant="acme", address="shared@example.com",
        kind=quarantine_pb2.FEEDBACK_KIND_HARD_BOUNCE,
        error_reason=quarantine_pb2.DELIVERY_ERROR_REASON_USER_UNKNOWN,
        event_id="mta-0001",
        context=common_pb2.ChangeContext(source=common_pb2.SOURCE_DELIVERY_FEEDBACK, actor="mta")))
    check(recorded.recorded, "the hard bounce is recorded")
    check(recorded.state.status == quarantine_pb2.ADDRESS_STATUS_QUARANTINED,
          f"quarantined: {recorded.state}")
    answer = eligibility.BatchCheckEligibility(eligibility_pb2.BatchCheckEligibilityRequest(
        tenant="acme", channel=common_pb2.CHANNEL_EMAIL, profile_ids=["alice", "bob"]))
    alice, bob = answer.decisions
    check(list(alice.reasons) == [eligibility_pb2.EXCLUSION_REASON_OPTED_OUT_ALL_CHANNELS,
                                  eligibility_pb2.EXCLUSION_REASON_ADDRESS_QUARANTINED],
          f"alice: {alice}")
    check(not bob.eligible
          and list(bob.reasons) == [eligibility_pb2.EXCLUSION_REASON_ADDRESS_QUARANTINED],
          f"bob: {bob}")
    check((answer.summary.total, answer.summary.eligible, answer.summary.excluded) == (2, 0, 2),
          f"summary: {answer.summary}")


def channel_only_opt_out(channel):
    """Carol opts out of SMS only: e-mail is still allowed."""
    from consent.v1 import common_pb2, consent_pb2, eligibility_pb2, profile_pb2
    from consent.v1 import consent_pb2_grpc, eligibility_pb2_grpc, profile_pb2_grpc

    profiles = profile_pb2_grpc.ProfileServiceStub(channel)
    consent = consent_pb2_grpc.ConsentServiceStub(channel)
    eligibility = eligibility_pb2_grpc.EligibilityServiceStub(channel)
    profiles.UpsertProfile(profile_pb2.UpsertProfileRequest(
        tenant="acme", profile_id="carol", emails=["carol@example.com"],
        phones=["+447700900123"],
        context=common_pb2.ChangeContext(source=common_pb2.SOURCE_IMPORT)))
    changed = consent.OptOut(consent_pb2.OptOutRequest(
        tenant="acme", profile_id="carol", channel=common_pb2.CHANNEL_SMS,
        context=common_pb2.ChangeContext(source=common_pb2.SOURCE_OPERATOR, actor="agent-7")))
    check(changed.changed, "the SMS opt-out changes carol's consent")

    def decide(on):
        return eligibility.CheckEligibility(eligibility_pb2.CheckEligibilityRequest(
            tenant="acme", profile_id="carol", channel=on)).decision

    email, sms = decide(common_pb2.CHANNEL_EMAIL), decide(common_pb2.CHANNEL_SMS)
    check(email.eligible and list(email.addresses) == ["carol@example.com"], f"email: {email}")
    check(not sms.eligible
          and list(sms.reasons) == [eligibility_pb2.EXCLUSION_REASON_OPTED_OUT_CHANNEL],
          f"sms: {sms}")
    voice = decide(common_pb2.CHANNEL_VOICE)
    check(voice.eligible and list(voice.addresses) == ["+447700900123"], f"voice: {voice}")


def batch_of_ten_thousand(channel):
    """10,000 recipients in one batch: 300 known profiles (every 10th opted out
    of all channels) and 9,700 unknown ids; the summary counts each once."""
    from consent.v1 import common_pb2, consent_pb2, eligibility_pb2, profile_pb2
    from consent.v1 import consent_pb2_grpc, eligibility_pb2_grpc, profile_pb2_grpc

    profiles = profile_pb2_grpc.ProfileServiceStub(channel)
    consent = consent_pb2_grpc.ConsentServiceStub(channel)
    eligibility = eligibility_pb2_grpc.EligibilityServiceStub(channel)
    imported = common_pb2.ChangeContext(source=common_pb2.SOURCE_IMPORT)
    known = [f"member-{i}" for i in range(300)]
    # Concurrent writes share group commits.
    pending = [profiles.UpsertProfile.future(profile_pb2.UpsertProfileRequest(
        tenant="batch", profile_id=profile_id, emails=[f"{profile_id}@example.com"],
        context=imported)) for profile_id in known]
    for write in pending:
        write.result()
    opted_out = known[::10]
    pending = [consent.OptOut.future(consent_pb2.OptOutRequest(
        tenant="batch", profile_id=profile_id, all_channels=True, context=imported))
        for profile_id in opted_out]
    for write in pending:
        write.result()
    ids = known + [f"stranger-{i}" for i in range(10_000 - len(known))]
    answer = eligibility.BatchCheckEligibility(eligibility_pb2.BatchCheckEligibilityRequest(
        tenant="batch", channel=common_pb2.CHANNEL_EMAIL, profile_ids=ids))
    check(len(answer.decisions) == 10_000, f"{len(answer.decisions)} decisions")
    check([d.profile_id for d in answer.decisions] == ids, "decisions in request order")
    summary = answer.summary
    check((summary.total, summary.eligible, summary.excluded) == (10_000, 270, 9_730),
          f"summary: {summary}")
    by_reason = {c.reason: c.count for c in summary.excluded_by_reason}
    check(by_reason == {eligibility_pb2.EXCLUSION_REASON_PROFILE_NOT_FOUND: 9_700,
                        eligibility_pb2.EXCLUSION_REASON_OPTED_OUT_ALL_CHANNELS: 30},
          f"by reason: {by_reason}")


def main():
    binary = (sys.argv[1] if len(sys.argv) > 1
              else os.environ.get("CONSENTD_BIN", os.path.join(ROOT, "target", "debug", "consentd")))
    with tempfile.TemporaryDirectory() as gen, tempfile.TemporaryDirectory() as data:
        generate_stubs(gen)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import grpc
        import example

        server = Server(binary, data)
        try:
            options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                       ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
            with grpc.insecure_channel(server.address, options=options) as channel:
                summary = example.shared_address_opt_out(channel)
                check((summary.total, summary.eligible, summary.excluded) == (2, 1, 1),
                      f"scenario 1 summary: {summary}")
                print("ok: shared address, one profile opted out")
                hard_bounce_quarantines_both(channel)
                print("ok: a hard bounce quarantines the address for both profiles")
                channel_only_opt_out(channel)
                print("ok: an SMS-only opt-out leaves e-mail and voice allowed")
                batch_of_ten_thousand(channel)
                print("ok: a 10,000-recipient batch and its summary")
        finally:
            server.stop()
    print("python client: all scenarios passed")


if __name__ == "__main__":
    main()
