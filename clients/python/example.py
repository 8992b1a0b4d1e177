"""Scenario 1 of docs/walkthrough.md, as a Python client: stubs generated from proto/ with
    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen proto/consent/v1/*.proto
and `gen` on the module path. test_scenarios.py runs it; docs/clients.md shows it."""

import grpc
from consent.v1 import common_pb2, consent_pb2, eligibility_pb2, profile_pb2
from consent.v1 import consent_pb2_grpc, eligibility_pb2_grpc, profile_pb2_grpc


def shared_address_opt_out(channel: grpc.Channel):
    """Alice and Bob share an e-mail address; Alice opts out; only Bob may be e-mailed."""
    profiles = profile_pb2_grpc.ProfileServiceStub(channel)
    consent = consent_pb2_grpc.ConsentServiceStub(channel)
    eligibility = eligibility_pb2_grpc.EligibilityServiceStub(channel)
    imported = common_pb2.ChangeContext(source=common_pb2.SOURCE_IMPORT)
    for profile_id in ["alice", "bob"]:
        profiles.UpsertProfile(profile_pb2.UpsertProfileRequest(
            tenant="acme", profile_id=profile_id, emails=["shared@example.com"],
            context=imported))
    consent.OptOut(consent_pb2.OptOutRequest(
        tenant="acme", profile_id="alice", all_channels=True,
        context=common_pb2.ChangeContext(source=common_pb2.SOURCE_LANDING_PAGE)))
    answer = eligibility.BatchCheckEligibility(eligibility_pb2.BatchCheckEligibilityRequest(
        tenant="acme", channel=common_pb2.CHANNEL_EMAIL, profile_ids=["alice", "bob"]))
    alice, bob = answer.decisions
    assert not alice.eligible
    assert alice.reasons[0] == eligibility_pb2.EXCLUSION_REASON_OPTED_OUT_ALL_CHANNELS
    assert bob.eligible and list(bob.addresses) == ["shared@example.com"]
    return answer.summary


if __name__ == "__main__":
    with grpc.insecure_channel("localhost:50051") as channel:
        summary = shared_address_opt_out(channel)
        print(summary.total, summary.eligible, summary.excluded)  # 2 1 1
