//! User scenarios against a real in-process server (see `common`).
//!
//! Time-dependent rules are driven by `occurred_at` and by moving the injected
//! manual clock; nothing sleeps.

use crate::common::*;
use consentd::pb::{
    AddressEventType, AddressStatus, Channel, ConsentStatus, Decision, DeliveryErrorReason,
    EligibilitySummary, ExclusionReason, FeedbackKind, QuarantineAddressRequest, ReasonCount,
    ReleaseAddressRequest, Source, StreamEligibilityRequest, UpsertProfileRequest,
};
use tokio::task::JoinSet;
use tonic::Code;
use tonic_types::StatusExt;

const SHARED: &str = "shared@example.com";
const A: &str = "profile-a";
const B: &str = "profile-b";

/// Two profiles that share one e-mail address; A opted out of all channels.
async fn shared_address_with_a_opted_out(app: &TestApp) {
    upsert(app, A, &[SHARED], &[]).await;
    upsert(app, B, &[SHARED], &[]).await;
    let out = opt_out_all(app, A).await;
    assert!(out.changed, "first all-channels opt-out changes A: {out:?}");
}

// ---------------------------------------------------------------------------
// Scenarios 1 and 2: a shared address, an opt-out, then a hard bounce
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_of_one_profile_does_not_exclude_another_profile_on_the_same_address() {
    let app = spawn_app().await;
    shared_address_with_a_opted_out(&app).await;

    let response = batch(&app, Channel::Email, &[A, B]).await;

    assert_eq!(response.decisions.len(), 2, "{response:?}");
    let a = &response.decisions[0];
    assert_eq!(a.profile_id, A);
    assert!(!a.eligible, "{a:?}");
    assert_eq!(reasons(a), vec![ExclusionReason::OptedOutAllChannels]);
    assert!(
        a.addresses.is_empty(),
        "an excluded decision lists no address: {a:?}"
    );

    let b = &response.decisions[1];
    assert_eq!(b.profile_id, B);
    assert!(b.eligible, "{b:?}");
    assert!(b.reasons.is_empty(), "{b:?}");
    assert_eq!(b.addresses, vec![SHARED.to_owned()]);

    assert_eq!(
        response.summary,
        Some(EligibilitySummary {
            total: 2,
            eligible: 1,
            excluded: 1,
            excluded_by_reason: vec![ReasonCount {
                reason: ExclusionReason::OptedOutAllChannels as i32,
                count: 1,
            }],
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_bounce_on_a_shared_address_excludes_every_profile_that_uses_it() {
    let app = spawn_app().await;
    shared_address_with_a_opted_out(&app).await;

    let response = feedback(
        &app,
        SHARED,
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "hard-1",
        None,
    )
    .await;
    assert!(response.recorded, "{response:?}");
    let state = response.state.expect("state is set");
    assert_eq!(state.status(), AddressStatus::Quarantined, "{state:?}");
    assert_eq!(state.address, SHARED);

    let response = batch(&app, Channel::Email, &[A, B]).await;
    let ids: Vec<&str> = response
        .decisions
        .iter()
        .map(|d| d.profile_id.as_str())
        .collect();
    assert_eq!(ids, vec![A, B]);
    let a = &response.decisions[0];
    assert!(!a.eligible, "{a:?}");
    assert_eq!(
        reasons(a),
        vec![
            ExclusionReason::OptedOutAllChannels,
            ExclusionReason::AddressQuarantined
        ]
    );
    let b = &response.decisions[1];
    assert!(!b.eligible, "{b:?}");
    assert_eq!(reasons(b), vec![ExclusionReason::AddressQuarantined]);
    assert!(b.addresses.is_empty(), "{b:?}");
    let summary = response.summary.expect("summary is set");
    assert_eq!(
        (summary.total, summary.eligible, summary.excluded),
        (2, 0, 2)
    );
    assert_eq!(
        by_reason(&summary),
        vec![
            (ExclusionReason::OptedOutAllChannels, 1),
            (ExclusionReason::AddressQuarantined, 1)
        ]
    );

    let status = address_status(&app, SHARED).await;
    assert_eq!(status.profile_ids, vec![A.to_owned(), B.to_owned()]);
    assert!(!status.profile_ids_truncated);
    let state = status.state.expect("state is set");
    assert_eq!(state.status(), AddressStatus::Quarantined, "{state:?}");

    // Quarantine is about the address: A's consent is unchanged, B has none.
    let b_consent = get_consent(&app, B).await;
    assert_eq!(
        b_consent.all_channels.as_ref().map(|m| m.status()),
        Some(ConsentStatus::NoPreference)
    );
}

// ---------------------------------------------------------------------------
// Scenario 3: a per-channel opt-out
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_opt_out_excludes_sms_only() {
    let app = spawn_app().await;
    upsert(&app, A, &["a@example.com"], &["+33612345678"]).await;
    let out = opt_out(&app, A, Channel::Sms).await;
    assert!(out.changed);
    let consent = out.consent.expect("consent is set");
    assert_eq!(
        channel_consent(&consent, Channel::Sms).effective_status(),
        ConsentStatus::OptedOut
    );
    assert_eq!(
        channel_consent(&consent, Channel::Voice).effective_status(),
        ConsentStatus::NoPreference
    );

    let email = check(&app, A, Channel::Email).await;
    assert!(email.eligible, "{email:?}");
    assert_eq!(email.addresses, vec!["a@example.com".to_owned()]);

    let sms = check(&app, A, Channel::Sms).await;
    assert!(!sms.eligible, "{sms:?}");
    assert_eq!(reasons(&sms), vec![ExclusionReason::OptedOutChannel]);
    assert!(sms.addresses.is_empty());

    let voice = check(&app, A, Channel::Voice).await;
    assert!(voice.eligible, "{voice:?}");
    assert_eq!(voice.addresses, vec!["+33612345678".to_owned()]);

    // No push token and no postal address: NO_ADDRESS, not an opt-out.
    let push = check(&app, A, Channel::Push).await;
    assert_eq!(reasons(&push), vec![ExclusionReason::NoAddress]);
}

// ---------------------------------------------------------------------------
// Scenario 4: soft bounces and the quarantine rules, in event time
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_soft_bounces_on_five_days_quarantine_the_address() {
    let app = spawn_app().await;
    let address = "soft@example.com";
    upsert(&app, "p-soft", &[address], &[]).await;
    // 25 h apart: each one is in a new significant-error interval.
    let first = app.now_ms() - 5 * DAY_MS;
    let step = DAY_MS + HOUR_MS;
    for i in 0..5_i64 {
        let state = soft_bounce(&app, address, &format!("soft-{i}"), first + i * step).await;
        let count = u32::try_from(i + 1).expect("small");
        assert_eq!(state.error_count, count, "after bounce {i}: {state:?}");
        let expected = if i < 4 {
            AddressStatus::WithErrors
        } else {
            AddressStatus::Quarantined
        };
        assert_eq!(state.status(), expected, "after bounce {i}: {state:?}");
        assert_eq!(ms_of(state.first_error_at.as_ref()), Some(first));
        assert_eq!(ms_of(state.last_error_at.as_ref()), Some(first + i * step));
    }

    let decision = check(&app, "p-soft", Channel::Email).await;
    assert_eq!(
        reasons(&decision),
        vec![ExclusionReason::AddressQuarantined]
    );
    assert_eq!(
        address_state(&app, address).await.status(),
        AddressStatus::Quarantined
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_soft_bounces_on_one_day_count_once() {
    let app = spawn_app().await;
    let address = "sameday@example.com";
    upsert(&app, "p-sameday", &[address], &[]).await;
    let first = app.now_ms() - 5 * HOUR_MS;
    for i in 0..5_i64 {
        let state = soft_bounce(&app, address, &format!("sameday-{i}"), first + i * HOUR_MS).await;
        assert_eq!(state.error_count, 1, "after bounce {i}: {state:?}");
        assert_eq!(state.status(), AddressStatus::WithErrors, "{state:?}");
    }
    let state = address_state(&app, address).await;
    assert_eq!(state.error_count, 1, "{state:?}");
    assert_eq!(state.status(), AddressStatus::WithErrors);
    assert_eq!(ms_of(state.first_error_at.as_ref()), Some(first));

    // WITH_ERRORS addresses may still be used.
    let decision = check(&app, "p-sameday", Channel::Email).await;
    assert!(decision.eligible, "{decision:?}");
    assert_eq!(decision.addresses, vec![address.to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_counts_once() {
    let app = spawn_app().await;
    let address = "redelivered@example.com";
    let at = app.now_ms() - HOUR_MS;
    let first = soft_bounce(&app, address, "same-event", at).await;
    assert_eq!(first.error_count, 1);
    for attempt in 1..5 {
        let again = feedback(
            &app,
            address,
            FeedbackKind::SoftBounce,
            DeliveryErrorReason::Unreachable,
            "same-event",
            Some(at),
        )
        .await;
        assert!(
            !again.recorded,
            "redelivery {attempt} is not recorded: {again:?}"
        );
        let state = again.state.expect("state is set");
        assert_eq!(state.error_count, 1, "redelivery {attempt}: {state:?}");
        assert_eq!(state.status(), AddressStatus::WithErrors);
    }
    // A redelivery with another kind is still the same event.
    let hard = feedback(
        &app,
        address,
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "same-event",
        Some(at),
    )
    .await;
    assert!(!hard.recorded, "{hard:?}");
    assert_eq!(
        address_state(&app, address).await.status(),
        AddressStatus::WithErrors
    );
    assert_eq!(address_history(&app, address).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_resets_the_error_count() {
    let app = spawn_app().await;
    let address = "delivered@example.com";
    let first = app.now_ms() - 4 * DAY_MS;
    for i in 0..3_i64 {
        soft_bounce(
            &app,
            address,
            &format!("e-{i}"),
            first + i * (DAY_MS + HOUR_MS),
        )
        .await;
    }
    let state = address_state(&app, address).await;
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::WithErrors, 3)
    );

    let delivered = feedback(
        &app,
        address,
        FeedbackKind::Delivered,
        DeliveryErrorReason::Unspecified,
        "delivered-1",
        Some(app.now_ms() - HOUR_MS),
    )
    .await;
    assert!(delivered.recorded);
    let state = delivered.state.expect("state is set");
    assert_eq!(state.status(), AddressStatus::Valid, "{state:?}");
    assert_eq!(state.error_count, 0, "{state:?}");
    assert_eq!(state.first_error_at, None, "no counted error: {state:?}");

    // The next soft bounce starts counting from one again.
    let state = soft_bounce(&app, address, "e-after", app.now_ms()).await;
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::WithErrors, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_older_than_the_reset_period_read_as_valid() {
    let app = spawn_app().await;
    let address = "old-errors@example.com";
    upsert(&app, "p-old", &[address], &[]).await;
    soft_bounce(&app, address, "old-1", app.now_ms() - 2 * DAY_MS - HOUR_MS).await;
    let state = soft_bounce(&app, address, "old-2", app.now_ms() - HOUR_MS).await;
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::WithErrors, 2)
    );

    // 9 days later the last error is 9 d 1 h old: still counted.
    app.advance_ms(9 * DAY_MS);
    let state = address_state(&app, address).await;
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::WithErrors, 2),
        "{state:?}"
    );

    // 11 days after the start it is 11 d 1 h old: older than the 10-day reset period.
    app.advance_ms(2 * DAY_MS);
    let state = address_state(&app, address).await;
    assert_eq!(state.status(), AddressStatus::Valid, "{state:?}");
    assert_eq!(state.error_count, 0, "{state:?}");
    let decision = check(&app, "p-old", Channel::Email).await;
    assert!(decision.eligible, "{decision:?}");

    // A new error starts a new count.
    let state = soft_bounce(&app, address, "new-1", app.now_ms()).await;
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::WithErrors, 1),
        "{state:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_full_errors_reset_after_thirty_days_only() {
    let app = spawn_app().await;
    let full = "full@example.com";
    let other = "other@example.com";
    let at = app.now_ms() - HOUR_MS;
    let state = feedback(
        &app,
        full,
        FeedbackKind::SoftBounce,
        DeliveryErrorReason::MailboxFull,
        "full-1",
        Some(at),
    )
    .await
    .state
    .expect("state is set");
    assert_eq!(
        (state.status(), state.error_count, state.last_error_reason()),
        (
            AddressStatus::WithErrors,
            1,
            DeliveryErrorReason::MailboxFull
        )
    );
    soft_bounce(&app, other, "other-1", at).await;

    app.advance_ms(11 * DAY_MS);
    let state = address_state(&app, full).await;
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::WithErrors, 1),
        "a MAILBOX_FULL error is kept after 11 days: {state:?}"
    );
    let state = address_state(&app, other).await;
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::Valid, 0),
        "an UNREACHABLE error is reset after 11 days: {state:?}"
    );

    app.advance_ms(20 * DAY_MS); // 31 days after the error
    let state = address_state(&app, full).await;
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::Valid, 0),
        "a MAILBOX_FULL error is reset after 30 days: {state:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_match_case_insensitively() {
    let app = spawn_app().await;
    upsert(&app, "p-case", &["foo@example.com"], &[]).await;
    let response = feedback(
        &app,
        "Foo@Example.COM",
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "case-1",
        None,
    )
    .await;
    let state = response.state.expect("state is set");
    assert_eq!(state.address, "foo@example.com", "normalised: {state:?}");
    assert_eq!(state.status(), AddressStatus::Quarantined);

    let status = address_status(&app, "foo@example.com").await;
    assert_eq!(
        status.state.as_ref().map(|s| s.status()),
        Some(AddressStatus::Quarantined),
        "{status:?}"
    );
    assert_eq!(status.profile_ids, vec!["p-case".to_owned()]);
    let decision = check(&app, "p-case", Channel::Email).await;
    assert_eq!(
        reasons(&decision),
        vec![ExclusionReason::AddressQuarantined]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_soft_bounces_give_the_in_order_result() {
    let app = spawn_app().await;
    let first = app.now_ms() - 5 * DAY_MS;
    let times: Vec<i64> = (0..5).map(|i| first + i * (DAY_MS + HOUR_MS)).collect();

    for (i, at) in times.iter().enumerate() {
        soft_bounce(&app, "in-order@example.com", &format!("in-{i}"), *at).await;
    }
    for (i, at) in times.iter().enumerate().rev() {
        soft_bounce(&app, "reversed@example.com", &format!("rev-{i}"), *at).await;
    }
    for i in [2_usize, 4, 0, 3, 1] {
        soft_bounce(&app, "shuffled@example.com", &format!("shuf-{i}"), times[i]).await;
    }

    let in_order = address_state(&app, "in-order@example.com").await;
    assert_eq!(
        counting_view(&in_order),
        (
            AddressStatus::Quarantined,
            5,
            Some(times[0]),
            Some(times[4]),
            DeliveryErrorReason::Unreachable
        )
    );
    for address in ["reversed@example.com", "shuffled@example.com"] {
        let state = address_state(&app, address).await;
        assert_eq!(
            counting_view(&state),
            counting_view(&in_order),
            "{address}: {state:?} vs in order {in_order:?}"
        );
    }

    // Below the threshold too: three bounces in two orders.
    for (i, at) in times.iter().take(3).enumerate() {
        soft_bounce(&app, "three-a@example.com", &format!("3a-{i}"), *at).await;
    }
    for i in [1_usize, 2, 0] {
        soft_bounce(&app, "three-b@example.com", &format!("3b-{i}"), times[i]).await;
    }
    let a = address_state(&app, "three-a@example.com").await;
    let b = address_state(&app, "three-b@example.com").await;
    assert_eq!(
        counting_view(&a),
        (
            AddressStatus::WithErrors,
            3,
            Some(times[0]),
            Some(times[2]),
            DeliveryErrorReason::Unreachable
        )
    );
    assert_eq!(counting_view(&b), counting_view(&a), "{b:?} vs {a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_soft_bounces_from_before_a_delivery_do_not_count() {
    let app = spawn_app().await;
    let first = app.now_ms() - 5 * DAY_MS;
    let at = |i: i64| first + i * (DAY_MS + HOUR_MS);

    // In order: two errors, a delivery (reset), one error.
    let in_order = "late-a@example.com";
    soft_bounce(&app, in_order, "a-0", at(0)).await;
    soft_bounce(&app, in_order, "a-1", at(1)).await;
    feedback(
        &app,
        in_order,
        FeedbackKind::Delivered,
        DeliveryErrorReason::Unspecified,
        "a-2",
        Some(at(2)),
    )
    .await;
    soft_bounce(&app, in_order, "a-3", at(3)).await;

    // The same events, the two early errors arriving last.
    let late = "late-b@example.com";
    feedback(
        &app,
        late,
        FeedbackKind::Delivered,
        DeliveryErrorReason::Unspecified,
        "b-2",
        Some(at(2)),
    )
    .await;
    soft_bounce(&app, late, "b-3", at(3)).await;
    soft_bounce(&app, late, "b-0", at(0)).await;
    soft_bounce(&app, late, "b-1", at(1)).await;

    let a = address_state(&app, in_order).await;
    assert_eq!(
        counting_view(&a),
        (
            AddressStatus::WithErrors,
            1,
            Some(at(3)),
            Some(at(3)),
            DeliveryErrorReason::Unreachable
        ),
        "{a:?}"
    );
    let b = address_state(&app, late).await;
    assert_eq!(counting_view(&b), counting_view(&a), "{b:?} vs {a:?}");
}

// ---------------------------------------------------------------------------
// Scenario 5: an operator denylists, then releases an address
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_denylists_then_releases_an_address() {
    let app = spawn_app().await;
    let address = "ops@example.com";
    upsert(&app, "p-ops", &[address], &[]).await;

    let denylist = QuarantineAddressRequest {
        tenant: TENANT.to_owned(),
        address: address.to_owned(),
        address_type: consentd::pb::AddressType::Unspecified as i32,
        status: AddressStatus::Denylisted as i32,
        context: operator("bob", "fraud report"),
    };
    let response = app
        .quarantine
        .clone()
        .quarantine_address(denylist.clone())
        .await
        .expect("QuarantineAddress")
        .into_inner();
    assert!(response.changed);
    let state = response.state.expect("state is set");
    assert_eq!(state.status(), AddressStatus::Denylisted);
    assert_eq!(state.last_reason, "fraud report", "{state:?}");

    // Idempotent: nothing is written the second time.
    let again = app
        .quarantine
        .clone()
        .quarantine_address(denylist)
        .await
        .expect("QuarantineAddress again")
        .into_inner();
    assert!(!again.changed, "{again:?}");

    let decision = check(&app, "p-ops", Channel::Email).await;
    assert_eq!(reasons(&decision), vec![ExclusionReason::AddressDenylisted]);

    app.advance_ms(MINUTE_MS);
    let released_at = app.now_ms();
    let release = ReleaseAddressRequest {
        tenant: TENANT.to_owned(),
        address: address.to_owned(),
        address_type: consentd::pb::AddressType::Unspecified as i32,
        context: operator("alice", "customer called"),
    };
    let response = app
        .quarantine
        .clone()
        .release_address(release.clone())
        .await
        .expect("ReleaseAddress")
        .into_inner();
    assert!(response.changed, "{response:?}");
    let state = response.state.expect("state is set");
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::Valid, 0)
    );

    let history = address_history(&app, address).await;
    assert_eq!(history.len(), 2, "{history:?}");
    let newest = &history[0];
    assert_eq!(newest.sequence, 2);
    assert_eq!(newest.event_type(), AddressEventType::Release);
    assert_eq!(newest.old_status(), AddressStatus::Denylisted);
    assert_eq!(newest.new_status(), AddressStatus::Valid);
    assert_eq!(ms_of(newest.recorded_at.as_ref()), Some(released_at));
    let context = newest.context.as_ref().expect("context is recorded");
    assert_eq!(context.source(), Source::Operator);
    assert_eq!(context.actor, "alice");
    assert_eq!(context.reason, "customer called");
    let oldest = &history[1];
    assert_eq!(oldest.sequence, 1);
    assert_eq!(oldest.event_type(), AddressEventType::ManualQuarantine);
    assert_eq!(oldest.requested_status(), AddressStatus::Denylisted);
    assert_eq!(oldest.old_status(), AddressStatus::Valid);
    assert_eq!(oldest.new_status(), AddressStatus::Denylisted);
    assert_eq!(
        oldest.context.as_ref().map(|c| c.actor.as_str()),
        Some("bob")
    );

    let status = address_status(&app, address).await;
    assert_eq!(
        status.state.as_ref().map(|s| s.status()),
        Some(AddressStatus::Valid)
    );
    assert_eq!(status.profile_ids, vec!["p-ops".to_owned()]);
    let decision = check(&app, "p-ops", Channel::Email).await;
    assert!(decision.eligible, "{decision:?}");
    assert_eq!(decision.addresses, vec![address.to_owned()]);

    // Releasing a VALID address changes nothing.
    let again = app
        .quarantine
        .clone()
        .release_address(release)
        .await
        .expect("ReleaseAddress again")
        .into_inner();
    assert!(!again.changed, "{again:?}");
    assert_eq!(address_history(&app, address).await.len(), 2);
}

// ---------------------------------------------------------------------------
// Scenario 6: large batches and streams
// ---------------------------------------------------------------------------

/// Distinct profiles per existing kind; audience ids repeat them.
const POOL: usize = 200;
const BATCH_LIMIT: usize = 10_000;

/// The audience's id at position `g`: a known pattern of eligible, opted-out,
/// unknown and address-less profiles (one of each per four positions).
fn audience_id(g: usize) -> String {
    let member = (g / 4) % POOL;
    match g % 4 {
        0 => format!("eligible-{member:03}"),
        1 => format!("optedout-{member:03}"),
        2 => format!("unknown-{g}"),
        _ => format!("noaddr-{member:03}"),
    }
}

fn member_email(kind: &str, member: usize) -> String {
    format!("{kind}-{member:03}@example.com")
}

/// Creates the POOL profiles of each existing kind, concurrently.
async fn seed_audience(app: &TestApp) {
    let mut tasks = JoinSet::new();
    for member in 0..POOL {
        let mut profiles = app.profiles.clone();
        let mut consent = app.consent.clone();
        tasks.spawn(async move {
            for (kind, emails, phones) in [
                ("eligible", vec![member_email("eligible", member)], vec![]),
                ("optedout", vec![member_email("optedout", member)], vec![]),
                ("noaddr", vec![], vec![format!("+3361234{member:04}")]),
            ] {
                profiles
                    .upsert_profile(UpsertProfileRequest {
                        tenant: TENANT.to_owned(),
                        profile_id: format!("{kind}-{member:03}"),
                        emails,
                        phones,
                        context: ctx(Source::Import),
                        ..Default::default()
                    })
                    .await
                    .expect("UpsertProfile");
            }
            consent
                .opt_out(consentd::pb::OptOutRequest {
                    tenant: TENANT.to_owned(),
                    profile_id: format!("optedout-{member:03}"),
                    all_channels: true,
                    context: ctx(Source::Import),
                    ..Default::default()
                })
                .await
                .expect("OptOut");
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("seeding task");
    }
}

fn assert_audience_decision(g: usize, decision: &Decision) {
    assert_eq!(
        decision.profile_id,
        audience_id(g),
        "decision {g} is out of order"
    );
    let member = (g / 4) % POOL;
    match g % 4 {
        0 => {
            assert!(decision.eligible, "{g}: {decision:?}");
            assert!(decision.reasons.is_empty(), "{g}: {decision:?}");
            assert_eq!(decision.addresses, vec![member_email("eligible", member)]);
        }
        kind => {
            let expected = match kind {
                1 => ExclusionReason::OptedOutAllChannels,
                2 => ExclusionReason::ProfileNotFound,
                _ => ExclusionReason::NoAddress,
            };
            assert!(!decision.eligible, "{g}: {decision:?}");
            assert_eq!(reasons(decision), vec![expected], "{g}: {decision:?}");
            assert!(decision.addresses.is_empty(), "{g}: {decision:?}");
        }
    }
}

/// The summary of `n` consecutive audience positions (`n` a multiple of 4).
fn audience_summary(n: usize) -> EligibilitySummary {
    let quarter = (n / 4) as u64;
    let count = |reason: ExclusionReason| ReasonCount {
        reason: reason as i32,
        count: quarter,
    };
    EligibilitySummary {
        total: n as u64,
        eligible: quarter,
        excluded: 3 * quarter,
        excluded_by_reason: vec![
            count(ExclusionReason::ProfileNotFound),
            count(ExclusionReason::OptedOutAllChannels),
            count(ExclusionReason::NoAddress),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_ten_thousand_keeps_request_order_and_summarises_exactly() {
    let app = spawn_app().await;
    seed_audience(&app).await;

    let ids: Vec<String> = (0..BATCH_LIMIT).map(audience_id).collect();
    let response = try_batch(&app, Channel::Email, ids)
        .await
        .expect("a batch of exactly 10,000 ids is accepted");
    assert_eq!(response.decisions.len(), BATCH_LIMIT);
    for (g, decision) in response.decisions.iter().enumerate() {
        assert_audience_decision(g, decision);
    }
    assert_eq!(response.summary, Some(audience_summary(BATCH_LIMIT)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_ten_thousand_and_one_is_too_large() {
    let app = spawn_app().await;
    let ids: Vec<String> = (0..=BATCH_LIMIT).map(audience_id).collect();
    let status = try_batch(&app, Channel::Email, ids)
        .await
        .expect_err("10,001 ids are rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("10000"),
        "the message names the limit: {:?}",
        status.message()
    );
    let info = error_info(&status);
    assert_eq!(info.domain, "consentd");
    assert_eq!(info.reason, "BATCH_TOO_LARGE", "{info:?}");
    assert_eq!(
        info.metadata.get("limit").map(String::as_str),
        Some("10000"),
        "{info:?}"
    );
    assert!(status.get_details_error_info().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_of_one_hundred_thousand_recipients_answers_every_chunk_in_order() {
    let app = spawn_app().await;
    seed_audience(&app).await;
    const CHUNKS: usize = 10;

    let requests: Vec<StreamEligibilityRequest> = (0..CHUNKS)
        .map(|c| {
            // The first chunk names tenant and channel; chunk 5 repeats them;
            // the others leave them out.
            let named = c == 0 || c == 5;
            StreamEligibilityRequest {
                tenant: if named {
                    TENANT.to_owned()
                } else {
                    String::new()
                },
                channel: if named {
                    Channel::Email as i32
                } else {
                    Channel::Unspecified as i32
                },
                profile_ids: (c * BATCH_LIMIT..(c + 1) * BATCH_LIMIT)
                    .map(audience_id)
                    .collect(),
                ..Default::default()
            }
        })
        .collect();

    let mut responses = app
        .eligibility
        .clone()
        .stream_eligibility(tokio_stream::iter(requests))
        .await
        .expect("StreamEligibility")
        .into_inner();
    let mut chunk = 0_usize;
    let mut last_total = None;
    while let Some(response) = responses.message().await.expect("stream message") {
        assert!(chunk < CHUNKS, "more responses than chunks");
        assert_eq!(response.decisions.len(), BATCH_LIMIT, "chunk {chunk}");
        for (j, decision) in response.decisions.iter().enumerate() {
            assert_audience_decision(chunk * BATCH_LIMIT + j, decision);
        }
        assert_eq!(
            response.chunk_summary,
            Some(audience_summary(BATCH_LIMIT)),
            "chunk {chunk}"
        );
        assert_eq!(
            response.total_summary,
            Some(audience_summary((chunk + 1) * BATCH_LIMIT)),
            "chunk {chunk}"
        );
        last_total = response.total_summary;
        chunk += 1;
    }
    assert_eq!(chunk, CHUNKS, "one response per chunk");
    let total = last_total.expect("a final total");
    assert_eq!(
        (total.total, total.eligible, total.excluded),
        (100_000, 25_000, 75_000)
    );
}

// ---------------------------------------------------------------------------
// Consent basics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_is_idempotent() {
    let app = spawn_app().await;
    upsert(&app, "p-idem", &["idem@example.com"], &[]).await;

    let first = opt_out(&app, "p-idem", Channel::Email).await;
    assert!(first.changed, "{first:?}");
    app.advance_ms(MINUTE_MS);
    let second = opt_out(&app, "p-idem", Channel::Email).await;
    assert!(!second.changed, "{second:?}");
    assert_eq!(second.consent, first.consent, "nothing changed");

    let history = consent_history(&app, "p-idem", 0, "").await;
    assert_eq!(history.entries.len(), 1, "{history:?}");
    assert!(history.next_page_token.is_empty());
    let entry = &history.entries[0];
    assert_eq!(entry.sequence, 1);
    assert_eq!(entry.channel(), Channel::Email);
    assert!(!entry.all_channels);
    assert_eq!(entry.old_status(), ConsentStatus::NoPreference);
    assert_eq!(entry.new_status(), ConsentStatus::OptedOut);
    assert_eq!(ms_of(entry.changed_at.as_ref()), Some(START_MS));

    // The all-channels opt-out is idempotent too.
    assert!(opt_out_all(&app, "p-idem").await.changed);
    assert!(!opt_out_all(&app, "p-idem").await.changed);
    assert_eq!(
        consent_history(&app, "p-idem", 0, "").await.entries.len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_channels_opt_out_wins_over_a_channel_opt_in_until_lifted() {
    let app = spawn_app().await;
    let id = "p-wins";
    upsert(&app, id, &["wins@example.com"], &[]).await;
    assert!(opt_out_all(&app, id).await.changed);

    let opt_in_email = opt_in(&app, id, Some(Channel::Email)).await;
    assert!(opt_in_email.changed, "{opt_in_email:?}");
    let consent = opt_in_email.consent.expect("consent is set");
    let email = channel_consent(&consent, Channel::Email);
    assert_eq!(
        email.mark.as_ref().map(|m| m.status()),
        Some(ConsentStatus::OptedIn)
    );
    assert_eq!(email.effective_status(), ConsentStatus::OptedOut);
    let decision = check(&app, id, Channel::Email).await;
    assert!(!decision.eligible, "{decision:?}");
    assert_eq!(
        reasons(&decision),
        vec![ExclusionReason::OptedOutAllChannels]
    );

    let lifted = opt_in(&app, id, None).await;
    assert!(lifted.changed, "{lifted:?}");
    let consent = lifted.consent.expect("consent is set");
    assert_ne!(
        consent.all_channels.as_ref().map(|m| m.status()),
        Some(ConsentStatus::OptedOut)
    );
    assert_eq!(
        channel_consent(&consent, Channel::Email).effective_status(),
        ConsentStatus::OptedIn
    );
    // Lifting keeps per-channel settings: SMS was never set.
    assert_eq!(
        channel_consent(&consent, Channel::Sms).effective_status(),
        ConsentStatus::NoPreference
    );
    let decision = check(&app, id, Channel::Email).await;
    assert!(decision.eligible, "{decision:?}");
    assert!(
        !opt_in(&app, id, None).await.changed,
        "lifting twice changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_history_pages_newest_first() {
    let app = spawn_app().await;
    let id = "p-pages";
    upsert(&app, id, &["pages@example.com"], &[]).await;
    let channels = [
        Channel::Email,
        Channel::Sms,
        Channel::Push,
        Channel::Voice,
        Channel::DirectMail,
    ];
    for channel in channels {
        app.advance_ms(SECOND_MS);
        assert!(opt_out(&app, id, channel).await.changed);
    }

    let mut token = String::new();
    let mut pages: Vec<Vec<u64>> = Vec::new();
    let mut entries = Vec::new();
    loop {
        let page = consent_history(&app, id, 2, &token).await;
        assert!(page.entries.len() <= 2, "{page:?}");
        pages.push(page.entries.iter().map(|e| e.sequence).collect());
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(pages.len() < 10, "pagination does not end: {pages:?}");
        token = page.next_page_token;
    }
    assert_eq!(pages, vec![vec![5, 4], vec![3, 2], vec![1]]);
    for entry in &entries {
        let index = usize::try_from(entry.sequence - 1).expect("small");
        assert_eq!(entry.channel(), channels[index], "{entry:?}");
        let seconds = i64::try_from(entry.sequence).expect("small");
        assert_eq!(
            ms_of(entry.changed_at.as_ref()),
            Some(START_MS + seconds * SECOND_MS)
        );
        assert_eq!(
            entry.context.as_ref().map(|c| c.source()),
            Some(Source::Api)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_consent_shows_when_and_by_what_source_each_scope_changed() {
    let app = spawn_app().await;
    let id = "p-get";
    upsert(&app, id, &["get@example.com"], &["+33612345678"]).await;
    app.advance_ms(HOUR_MS);
    let out = opt_out_with(&app, id, Some(Channel::Sms), ctx(Source::LandingPage)).await;
    assert!(out.changed);

    let consent = get_consent(&app, id).await;
    let order: Vec<Channel> = consent.channels.iter().map(|c| c.channel()).collect();
    assert_eq!(
        order,
        vec![
            Channel::Email,
            Channel::Sms,
            Channel::Push,
            Channel::Voice,
            Channel::DirectMail
        ]
    );
    let sms = channel_consent(&consent, Channel::Sms);
    let mark = sms.mark.as_ref().expect("mark is set");
    assert_eq!(mark.status(), ConsentStatus::OptedOut);
    assert_eq!(ms_of(mark.changed_at.as_ref()), Some(START_MS + HOUR_MS));
    assert_eq!(mark.source(), Source::LandingPage);
    assert_eq!(sms.effective_status(), ConsentStatus::OptedOut);

    let email = channel_consent(&consent, Channel::Email);
    let mark = email.mark.as_ref().expect("mark is set");
    assert_eq!(mark.status(), ConsentStatus::NoPreference);
    assert_eq!(mark.changed_at, None);
    assert_eq!(mark.source(), Source::Unspecified);
    assert_eq!(email.effective_status(), ConsentStatus::NoPreference);

    let all = consent.all_channels.as_ref().expect("all_channels is set");
    assert_eq!(all.status(), ConsentStatus::NoPreference);
    assert_eq!(all.changed_at, None);

    // GetProfile carries the same consent state.
    let profile = get_profile(&app, id).await.expect("GetProfile");
    assert_eq!(profile.consent, Some(consent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_normalises_addresses_and_keeps_consent() {
    let app = spawn_app().await;
    let id = "p-upsert";
    let response = app
        .profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            emails: vec![
                " Mixed.Case@Example.COM ".to_owned(),
                "mixed.case@example.com".to_owned(),
            ],
            phones: vec!["+33 (6) 12-34.56.78".to_owned()],
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect("UpsertProfile")
        .into_inner();
    assert!(response.created);
    let profile = response.profile.expect("profile is set");
    assert_eq!(profile.emails, vec!["mixed.case@example.com".to_owned()]);
    assert_eq!(profile.phones, vec!["+33612345678".to_owned()]);
    assert_eq!(ms_of(profile.created_at.as_ref()), Some(START_MS));
    assert_eq!(ms_of(profile.updated_at.as_ref()), Some(START_MS));

    assert!(opt_out_all(&app, id).await.changed);
    app.advance_ms(HOUR_MS);
    let response = app
        .profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            emails: vec!["new@example.com".to_owned()],
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect("UpsertProfile again")
        .into_inner();
    assert!(!response.created);
    let profile = response.profile.expect("profile is set");
    assert_eq!(profile.emails, vec!["new@example.com".to_owned()]);
    assert!(
        profile.phones.is_empty(),
        "addresses are replaced: {profile:?}"
    );
    assert_eq!(ms_of(profile.created_at.as_ref()), Some(START_MS));
    assert_eq!(ms_of(profile.updated_at.as_ref()), Some(START_MS + HOUR_MS));
    assert_eq!(
        profile
            .consent
            .as_ref()
            .and_then(|c| c.all_channels.as_ref())
            .map(|m| m.status()),
        Some(ConsentStatus::OptedOut),
        "the consent state is kept: {profile:?}"
    );

    // The old address no longer belongs to the profile; the new one does.
    assert!(
        address_status(&app, "mixed.case@example.com")
            .await
            .profile_ids
            .is_empty()
    );
    assert_eq!(
        address_status(&app, "new@example.com").await.profile_ids,
        vec![id.to_owned()]
    );
}

// ---------------------------------------------------------------------------
// More quarantine rules
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complaint_denylists_and_ignored_feedback_changes_nothing() {
    let app = spawn_app().await;
    let ignored = feedback(
        &app,
        "ooo@example.com",
        FeedbackKind::Ignored,
        DeliveryErrorReason::Unspecified,
        "ignored-1",
        None,
    )
    .await;
    assert!(ignored.recorded, "{ignored:?}");
    let state = ignored.state.expect("state is set");
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::Valid, 0)
    );

    let complaint = feedback(
        &app,
        "spam@example.com",
        FeedbackKind::Complaint,
        DeliveryErrorReason::Unspecified,
        "complaint-1",
        None,
    )
    .await;
    let state = complaint.state.expect("state is set");
    assert_eq!(state.status(), AddressStatus::Denylisted, "{state:?}");
    upsert(&app, "p-spam", &["spam@example.com"], &[]).await;
    let decision = check(&app, "p-spam", Channel::Email).await;
    assert_eq!(reasons(&decision), vec![ExclusionReason::AddressDenylisted]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_is_lifted_neither_by_a_delivery_nor_by_time() {
    let app = spawn_app().await;
    let address = "stuck@example.com";
    feedback(
        &app,
        address,
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "stuck-hard",
        Some(app.now_ms() - HOUR_MS),
    )
    .await;
    let delivered = feedback(
        &app,
        address,
        FeedbackKind::Delivered,
        DeliveryErrorReason::Unspecified,
        "stuck-delivered",
        None,
    )
    .await;
    assert_eq!(
        delivered.state.map(|s| s.status()),
        Some(AddressStatus::Quarantined)
    );
    app.advance_ms(40 * DAY_MS);
    assert_eq!(
        address_state(&app, address).await.status(),
        AddressStatus::Quarantined
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_phone_excludes_sms_and_voice_but_not_letters() {
    let app = spawn_app().await;
    app.profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: "p-phone".to_owned(),
            phones: vec!["+33 6 12 34 56 78".to_owned()],
            postal_address: "1 rue de la Paix, 75002 Paris".to_owned(),
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect("UpsertProfile");
    // Reported in another format: normalised to the same E.164 number.
    let state = feedback(
        &app,
        "+33 (6) 12-34-56-78",
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "phone-hard",
        None,
    )
    .await
    .state
    .expect("state is set");
    assert_eq!(state.address, "+33612345678");
    assert_eq!(state.address_type(), consentd::pb::AddressType::Phone);

    for channel in [Channel::Sms, Channel::Voice] {
        let decision = check(&app, "p-phone", channel).await;
        assert_eq!(
            reasons(&decision),
            vec![ExclusionReason::AddressQuarantined],
            "{channel:?}"
        );
    }
    let letter = check(&app, "p-phone", Channel::DirectMail).await;
    assert!(letter.eligible, "{letter:?}");
    assert_eq!(
        letter.addresses,
        vec!["1 rue de la Paix, 75002 Paris".to_owned()]
    );
    assert_eq!(
        address_status(&app, "+33612345678").await.profile_ids,
        vec!["p-phone".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_usable_address_is_enough() {
    let app = spawn_app().await;
    let emails = ["one@example.com", "two@example.com", "three@example.com"];
    upsert(&app, "p-multi", &emails, &[]).await;
    feedback(
        &app,
        "one@example.com",
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "multi-1",
        None,
    )
    .await;
    feedback(
        &app,
        "two@example.com",
        FeedbackKind::Complaint,
        DeliveryErrorReason::Unspecified,
        "multi-2",
        None,
    )
    .await;

    let decision = check(&app, "p-multi", Channel::Email).await;
    assert!(decision.eligible, "{decision:?}");
    assert_eq!(decision.addresses, vec!["three@example.com".to_owned()]);

    feedback(
        &app,
        "three@example.com",
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "multi-3",
        None,
    )
    .await;
    let decision = check(&app, "p-multi", Channel::Email).await;
    assert!(!decision.eligible, "{decision:?}");
    assert_eq!(
        reasons(&decision),
        vec![
            ExclusionReason::AddressQuarantined,
            ExclusionReason::AddressDenylisted
        ]
    );
    assert!(decision.addresses.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_is_per_tenant() {
    let app = spawn_app().await;
    upsert(&app, "p-tenant", &["tenant@example.com"], &[]).await;
    app.profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            tenant: "other-tenant".to_owned(),
            profile_id: "p-tenant".to_owned(),
            emails: vec!["tenant@example.com".to_owned()],
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect("UpsertProfile in the other tenant");
    feedback(
        &app,
        "tenant@example.com",
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "tenant-hard",
        None,
    )
    .await;

    let other = app
        .eligibility
        .clone()
        .check_eligibility(consentd::pb::CheckEligibilityRequest {
            tenant: "other-tenant".to_owned(),
            profile_id: "p-tenant".to_owned(),
            channel: Channel::Email as i32,
            ..Default::default()
        })
        .await
        .expect("CheckEligibility")
        .into_inner()
        .decision
        .expect("decision is set");
    assert!(
        other.eligible,
        "the other tenant's address is not quarantined: {other:?}"
    );
    let own = check(&app, "p-tenant", Channel::Email).await;
    assert_eq!(reasons(&own), vec![ExclusionReason::AddressQuarantined]);

    // The same event id in another tenant is another event.
    let response = app
        .quarantine
        .clone()
        .record_delivery_feedback(consentd::pb::RecordDeliveryFeedbackRequest {
            tenant: "other-tenant".to_owned(),
            address: "tenant@example.com".to_owned(),
            kind: FeedbackKind::SoftBounce as i32,
            event_id: "tenant-hard".to_owned(),
            context: ctx(Source::DeliveryFeedback),
            ..Default::default()
        })
        .await
        .expect("RecordDeliveryFeedback in the other tenant")
        .into_inner();
    assert!(response.recorded, "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_never_seen_is_valid() {
    let app = spawn_app().await;
    let status = address_status(&app, "Never.Seen@Example.com").await;
    let state = status.state.expect("state is set");
    assert_eq!(state.address, "never.seen@example.com");
    assert_eq!(state.address_type(), consentd::pb::AddressType::Email);
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::Valid, 0)
    );
    assert_eq!(state.updated_at, None);
    assert!(status.profile_ids.is_empty());
    assert!(
        address_history(&app, "never.seen@example.com")
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_quarantined_addresses_pages_in_status_type_address_order() {
    use consentd::pb::ListQuarantinedAddressesRequest;
    let app = spawn_app().await;
    let at = app.now_ms() - HOUR_MS;
    // Not listed: VALID.
    feedback(
        &app,
        "fine@example.com",
        FeedbackKind::Delivered,
        DeliveryErrorReason::Unspecified,
        "fine",
        Some(at),
    )
    .await;
    soft_bounce(&app, "b-errors@example.com", "b-errors", at).await;
    soft_bounce(&app, "a-errors@example.com", "a-errors", at).await;
    for (address, kind) in [
        ("z-hard@example.com", FeedbackKind::HardBounce),
        ("+33612345678", FeedbackKind::HardBounce),
        ("m-hard@example.com", FeedbackKind::HardBounce),
        ("c-spam@example.com", FeedbackKind::Complaint),
    ] {
        feedback(
            &app,
            address,
            kind,
            DeliveryErrorReason::Unspecified,
            &format!("ev-{address}"),
            Some(at),
        )
        .await;
    }

    let list = |status: AddressStatus, page_size: i32, page_token: String| {
        let mut client = app.quarantine.clone();
        async move {
            client
                .list_quarantined_addresses(ListQuarantinedAddressesRequest {
                    tenant: TENANT.to_owned(),
                    status: status as i32,
                    page_size,
                    page_token,
                })
                .await
                .expect("ListQuarantinedAddresses")
                .into_inner()
        }
    };

    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(AddressStatus::Unspecified, 2, token).await;
        assert!(page.addresses.len() <= 2, "{page:?}");
        listed.extend(page.addresses.into_iter().map(|s| (s.status(), s.address)));
        pages += 1;
        assert!(pages <= 10, "pagination does not end");
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // Status, then type (EMAIL before PHONE), then address.
    let expected = vec![
        (AddressStatus::WithErrors, "a-errors@example.com".to_owned()),
        (AddressStatus::WithErrors, "b-errors@example.com".to_owned()),
        (AddressStatus::Quarantined, "m-hard@example.com".to_owned()),
        (AddressStatus::Quarantined, "z-hard@example.com".to_owned()),
        (AddressStatus::Quarantined, "+33612345678".to_owned()),
        (AddressStatus::Denylisted, "c-spam@example.com".to_owned()),
    ];
    assert_eq!(listed, expected);
    assert_eq!(pages, 3);

    let only = list(AddressStatus::Quarantined, 0, String::new()).await;
    let addresses: Vec<&str> = only.addresses.iter().map(|s| s.address.as_str()).collect();
    assert_eq!(
        addresses,
        vec!["m-hard@example.com", "z-hard@example.com", "+33612345678"]
    );
    assert!(only.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_rules_come_from_the_settings() {
    use consentd::{engine::QuarantineRules, server::Settings};
    let app = spawn_app_with(Settings {
        rules: QuarantineRules {
            soft_error_threshold: 2,
            ..QuarantineRules::default()
        },
        ..Settings::default()
    })
    .await;
    let address = "strict@example.com";
    let first = soft_bounce(&app, address, "strict-1", app.now_ms() - 2 * DAY_MS).await;
    assert_eq!(first.status(), AddressStatus::WithErrors);
    let second = soft_bounce(&app, address, "strict-2", app.now_ms() - HOUR_MS).await;
    assert_eq!(
        (second.status(), second.error_count),
        (AddressStatus::Quarantined, 2),
        "the threshold is 2 here: {second:?}"
    );
}
