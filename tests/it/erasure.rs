//! Erasure and data-subject access (`EraseProfile`, `ExportProfileData`)
//! against a real server: an erased person who had opted out stays opted
//! out when a CRM re-imports them, and nothing readable about them is left
//! in the store's export; a person who never opted out leaves nothing;
//! address states stay; the export document holds everything about a
//! profile.

use std::process::Command;

use crate::common::*;
use consentd::pb::{
    AddressStatus, AddressType, Channel, EraseProfileRequest, EraseProfileResponse,
    ExclusionReason, ExportProfileDataRequest, QuarantineAddressRequest, Source, WatchRequest,
    watch_change::Change as Watched, watch_service_client::WatchServiceClient,
};
use serde_json::Value;
use tonic::{Code, Status};

const SECRET_ID: &str = "crm-4711-jane";
const EMAIL: &str = "Jane.Doe@Example.com";
const EMAIL_NORMALISED: &str = "jane.doe@example.com";
const PHONE: &str = "+33612345678";

async fn try_erase(app: &TestApp, id: &str) -> Result<EraseProfileResponse, Status> {
    app.profiles
        .clone()
        .erase_profile(EraseProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            context: operator("dpo", "ticket GDPR-17"),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn erase(app: &TestApp, id: &str) -> EraseProfileResponse {
    try_erase(app, id)
        .await
        .unwrap_or_else(|s| panic!("EraseProfile {id}: {s:?}"))
}

async fn try_export(app: &TestApp, id: &str) -> Result<Value, Status> {
    app.profiles
        .clone()
        .export_profile_data(ExportProfileDataRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            assert_eq!(r.content_type, "application/json");
            serde_json::from_str(&r.document).expect("the document is JSON")
        })
}

/// The batch decision of one profile.
async fn batch_reasons(app: &TestApp, id: &str, channel: Channel) -> Vec<ExclusionReason> {
    let answer = batch(app, channel, &[id]).await;
    assert_eq!(answer.decisions.len(), 1, "{answer:?}");
    reasons(&answer.decisions[0])
}

#[tokio::test]
async fn an_erased_person_who_opted_out_stays_opted_out_when_re_imported() {
    let app = spawn_app().await;
    upsert(&app, SECRET_ID, &[EMAIL], &[PHONE]).await;
    opt_out_all(&app, SECRET_ID).await;
    let erased = erase(&app, SECRET_ID).await;
    assert_eq!(erased.tombstones, 2, "the e-mail and the phone: {erased:?}");
    assert_eq!(erased.history_entries, 1);
    assert_eq!(erased.subscriptions, 0);
    assert_eq!(ms_of(erased.erased_at.as_ref()), Some(app.now_ms()));

    // Gone: reads say so, decisions too, and a retry is NOT_FOUND.
    assert_profile_not_found(
        "get",
        &get_profile(&app, SECRET_ID).await.expect_err("gone"),
    );
    assert_eq!(
        reasons(&check(&app, SECRET_ID, Channel::Email).await),
        [ExclusionReason::ProfileNotFound]
    );
    assert_profile_not_found(
        "retry",
        &try_erase(&app, SECRET_ID).await.expect_err("gone"),
    );

    // The CRM re-imports the person, under the same id and under another,
    // with the e-mail spelled differently: both are opted out of everything.
    app.advance_ms(DAY_MS);
    let again = upsert(&app, SECRET_ID, &[EMAIL_NORMALISED], &[]).await;
    let consent = again.consent.expect("consent");
    assert_eq!(
        consent.all_channels.expect("all_channels").status,
        consentd::pb::ConsentStatus::OptedOut as i32,
        "{consent:?}"
    );
    assert_eq!(
        batch_reasons(&app, SECRET_ID, Channel::Email).await,
        [ExclusionReason::OptedOutAllChannels]
    );
    assert_eq!(
        reasons(&check(&app, SECRET_ID, Channel::Email).await),
        [ExclusionReason::OptedOutAllChannels]
    );
    upsert(&app, "other-id", &[], &["+33 6 12 34 56 78"]).await;
    assert_eq!(
        batch_reasons(&app, "other-id", Channel::Sms).await,
        [ExclusionReason::OptedOutAllChannels]
    );
    // The history says why, without naming anyone.
    let history = consent_history(&app, SECRET_ID, 10, "").await.entries;
    assert_eq!(history.len(), 1, "{history:?}");
    let context = history[0].context.clone().expect("context");
    assert_eq!(context.source, Source::Api as i32);
    assert_eq!(context.actor, "consentd");
    assert!(context.reason.contains("erasure"), "{context:?}");

    // It survives a restart (the tombstones are durable).
    let app = app.restart().await;
    upsert(&app, "third-id", &[EMAIL], &[]).await;
    assert_eq!(
        batch_reasons(&app, "third-id", Channel::Email).await,
        [ExclusionReason::OptedOutAllChannels]
    );
    // Until the person opts in again.
    opt_in(&app, "third-id", None).await;
    assert!(check(&app, "third-id", Channel::Email).await.eligible);
    // An address added later to an existing profile brings its opt-out too.
    upsert(&app, "fourth-id", &["someone@example.com"], &[]).await;
    assert!(check(&app, "fourth-id", Channel::Email).await.eligible);
    upsert(&app, "fourth-id", &["someone@example.com", EMAIL], &[]).await;
    assert_eq!(
        reasons(&check(&app, "fourth-id", Channel::Email).await),
        [ExclusionReason::OptedOutAllChannels]
    );
}

#[tokio::test]
async fn a_channel_opt_out_is_kept_only_for_the_addresses_it_reaches() {
    let app = spawn_app().await;
    upsert(&app, SECRET_ID, &[EMAIL], &[PHONE]).await;
    opt_out(&app, SECRET_ID, Channel::Sms).await;
    assert_eq!(erase(&app, SECRET_ID).await.tombstones, 1, "the phone only");
    upsert(&app, "again", &[EMAIL], &[PHONE]).await;
    assert_eq!(
        reasons(&check(&app, "again", Channel::Sms).await),
        [ExclusionReason::OptedOutChannel]
    );
    assert!(check(&app, "again", Channel::Email).await.eligible);
    assert!(check(&app, "again", Channel::Voice).await.eligible);
}

#[tokio::test]
async fn a_person_who_never_opted_out_leaves_nothing_and_address_states_stay() {
    let app = spawn_app().await;
    upsert(&app, SECRET_ID, &[EMAIL], &[]).await;
    opt_in(&app, SECRET_ID, Some(Channel::Email)).await;
    app.quarantine
        .clone()
        .quarantine_address(QuarantineAddressRequest {
            tenant: TENANT.to_owned(),
            address: EMAIL.to_owned(),
            address_type: AddressType::Email as i32,
            status: AddressStatus::Denylisted as i32,
            context: operator("ops", "spam trap"),
        })
        .await
        .expect("QuarantineAddress");
    let erased = erase(&app, SECRET_ID).await;
    assert_eq!(erased.tombstones, 0, "{erased:?}");
    assert_eq!(
        address_state(&app, EMAIL).await.status,
        AddressStatus::Denylisted as i32,
        "the address's state is the address's, not the person's"
    );
    let again = upsert(&app, SECRET_ID, &[EMAIL], &[]).await;
    let consent = again.consent.expect("consent");
    assert_ne!(
        consent.all_channels.expect("all_channels").status,
        consentd::pb::ConsentStatus::OptedOut as i32,
        "{consent:?}"
    );
    assert!(
        consent_history(&app, SECRET_ID, 10, "")
            .await
            .entries
            .is_empty()
    );
    assert_eq!(
        reasons(&check(&app, SECRET_ID, Channel::Email).await),
        [ExclusionReason::AddressDenylisted]
    );
}

#[tokio::test]
async fn invalid_and_unknown_requests_are_refused_by_field() {
    let app = spawn_app().await;
    let refused = app
        .profiles
        .clone()
        .erase_profile(EraseProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: String::new(),
            context: None,
        })
        .await
        .expect_err("invalid");
    assert_validation_failed("erase", &refused, &["profile_id", "context"]);
    let refused = app
        .profiles
        .clone()
        .export_profile_data(ExportProfileDataRequest {
            tenant: "not a tenant".to_owned(),
            profile_id: "p".to_owned(),
        })
        .await
        .expect_err("invalid");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_profile_not_found("erase", &try_erase(&app, "nobody").await.expect_err("none"));
    assert_profile_not_found(
        "export",
        &try_export(&app, "nobody").await.expect_err("none"),
    );
}

#[tokio::test]
async fn the_export_document_holds_everything_about_the_profile() {
    let app = spawn_app().await;
    upsert(&app, SECRET_ID, &[EMAIL], &[PHONE]).await;
    opt_out_with(
        &app,
        SECRET_ID,
        Some(Channel::Sms),
        Some(consentd::pb::ChangeContext {
            source: Source::LandingPage as i32,
            actor: "jane".to_owned(),
            reason: "too many texts".to_owned(),
            ip_address: "192.0.2.7".to_owned(),
            user_agent: "Mozilla/5.0".to_owned(),
            notice_version: "v3".to_owned(),
            ..Default::default()
        }),
    )
    .await;
    subscribed_to_new_service(&app, SECRET_ID, "weekly", "Weekly", false).await;
    let doc = try_export(&app, SECRET_ID).await.expect("export");
    assert_eq!(doc["format"], "consentd-profile-data");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["tenant"], TENANT);
    assert_eq!(doc["profile"]["profile_id"], SECRET_ID);
    assert_eq!(doc["profile"]["emails"][0], EMAIL_NORMALISED);
    assert_eq!(doc["profile"]["consent"]["sms"]["status"], "OPTED_OUT");
    assert_eq!(doc["consent_history_complete"], true);
    let history = doc["consent_history"].as_array().expect("history");
    assert_eq!(history.len(), 2, "the opt-out and the subscription: {doc}");
    let opt_out = history
        .iter()
        .find(|e| e["context"]["reason"] == "too many texts")
        .unwrap_or_else(|| panic!("the opt-out with its proof: {doc}"));
    assert_eq!(opt_out["context"]["source"], "LANDING_PAGE");
    assert_eq!(opt_out["context"]["ip_address"], "192.0.2.7");
    assert_eq!(opt_out["context"]["notice_version"], "v3");
    assert_eq!(doc["subscriptions"][0]["service_id"], "weekly");
    assert_eq!(doc["subscriptions"][0]["status"], "ACTIVE");
    let addresses = doc["addresses"].as_array().expect("addresses");
    assert_eq!(addresses.len(), 2, "{doc}");
    assert_eq!(addresses[0]["address_type"], "EMAIL");
    assert_eq!(addresses[0]["address"], EMAIL_NORMALISED);
    assert_eq!(addresses[1]["address"], PHONE);

    // Once erased, there is nothing to export.
    let erased = erase(&app, SECRET_ID).await;
    assert_eq!(erased.subscriptions, 1);
    assert_eq!(erased.tombstones, 1, "the SMS opt-out, kept for the phone");
    assert_profile_not_found(
        "export",
        &try_export(&app, SECRET_ID).await.expect_err("gone"),
    );
}

#[tokio::test]
async fn watchers_are_told_of_an_erasure() {
    let app = spawn_app().await;
    upsert(&app, SECRET_ID, &[EMAIL], &[]).await;
    let mut watch = WatchServiceClient::new(app.channel.clone())
        .watch(WatchRequest {
            tenant: TENANT.to_owned(),
            start_token: String::new(),
        })
        .await
        .expect("Watch")
        .into_inner();
    // The first message is a checkpoint where the watch starts.
    watch.message().await.expect("read").expect("checkpoint");
    erase(&app, SECRET_ID).await;
    loop {
        let message = watch.message().await.expect("read").expect("a message");
        let erased = message.changes.iter().find_map(|c| match &c.change {
            Some(Watched::ProfileErased(e)) => Some(e.profile_id.clone()),
            _ => None,
        });
        if let Some(id) = erased {
            assert_eq!(id, SECRET_ID);
            break;
        }
    }
}

/// Exports the store a stopped test server used, as `consentd export`
/// does, and returns its text.
fn export_store(data_dir: &std::path::Path) -> String {
    std::fs::read_to_string(export_store_to_file(data_dir).path()).expect("read the export")
}

fn export_store_to_file(data_dir: &std::path::Path) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temporary file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_consentd"));
    command.arg("export").env("RUST_LOG", "warn");
    match crate::common::pg::harness_on_postgres()
        .then(crate::common::pg::database_url)
        .flatten()
    {
        Some(url) => {
            let schema = crate::common::pg::schema_for(data_dir);
            let separator = if url.contains('?') { '&' } else { '?' };
            command.arg("--database-url").arg(format!(
                "{url}{separator}options=-c%20search_path%3D{schema}"
            ));
        }
        None => {
            command.arg("--data-dir").arg(data_dir);
        }
    }
    let out = command
        .arg("--output")
        .arg(file.path())
        .output()
        .expect("run consentd export");
    assert!(
        out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

#[tokio::test]
async fn nothing_readable_about_an_erased_person_is_left_in_an_export() {
    let app = spawn_app().await;
    upsert(&app, SECRET_ID, &[EMAIL], &[PHONE]).await;
    upsert(&app, "someone-else", &["other@example.com"], &[]).await;
    opt_out_all(&app, SECRET_ID).await;
    opt_out(&app, SECRET_ID, Channel::Email).await;
    subscribed_to_new_service(&app, SECRET_ID, "weekly", "Weekly", true).await;
    erase(&app, SECRET_ID).await;
    let (data_dir, _clock) = app.stop().await;
    let export = export_store(data_dir.path());
    for secret in [SECRET_ID, EMAIL, EMAIL_NORMALISED, PHONE, "612345678"] {
        assert!(
            !export.to_lowercase().contains(&secret.to_lowercase()),
            "{secret} is still in the export:\n{export}"
        );
    }
    // What is there: the other profile, the erasure (without the person),
    // the tenant's secret and a tombstone per address.
    let types: Vec<String> = export
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("JSON line");
            v["type"].as_str().expect("type").to_owned()
        })
        .collect();
    assert!(export.contains("someone-else"));
    assert_eq!(types.iter().filter(|t| *t == "tombstone").count(), 2);
    assert_eq!(types.iter().filter(|t| *t == "erasure_key").count(), 1);
    assert_eq!(types.iter().filter(|t| *t == "erasure").count(), 1);
    assert!(
        export.contains("ticket GDPR-17"),
        "the erasure's reason is kept"
    );
    assert!(
        !types.iter().any(|t| t == "confirmation_token"),
        "{types:?}"
    );
}

#[tokio::test]
async fn tombstones_survive_an_export_and_an_import() {
    if crate::common::pg::harness_on_postgres() {
        // The import below fills a data directory (the embedded store).
        return;
    }
    let app = spawn_app().await;
    upsert(&app, SECRET_ID, &[EMAIL], &[]).await;
    opt_out_all(&app, SECRET_ID).await;
    erase(&app, SECRET_ID).await;
    let (data_dir, clock) = app.stop().await;
    let file = export_store_to_file(data_dir.path());
    let restored = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_consentd"))
        .env("RUST_LOG", "warn")
        .arg("import")
        .arg("--data-dir")
        .arg(restored.path())
        .arg(file.path())
        .output()
        .expect("run consentd import");
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = TestApp::start_on(restored, clock).await;
    upsert(&app, "after-restore", &[EMAIL], &[]).await;
    assert_eq!(
        reasons(&check(&app, "after-restore", Channel::Email).await),
        [ExclusionReason::OptedOutAllChannels]
    );
}
