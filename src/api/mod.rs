//! The gRPC edge: the only code that names tonic or prost types (besides
//! `server`, which wires transport). Each handler parses its request into
//! domain values (`convert`), calls the application, and converts the result
//! back; errors become statuses in one place (`status`).

mod access;
mod admin;
pub(crate) mod auth_layer;
pub(crate) mod codec;
mod convert;
mod eligibility;
#[doc(hidden)]
pub mod fuzz;
mod page;
mod preference;
mod profile;
mod quarantine;
mod status;
mod stream_limits;
mod subscription;
mod tenant;
mod usage;
mod watch;

use crate::{
    app::App,
    pb::{
        admin_service_server::AdminServiceServer, consent_service_server::ConsentServiceServer,
        preference_service_server::PreferenceServiceServer,
        product_usage_service_server::ProductUsageServiceServer,
        profile_service_server::ProfileServiceServer,
        quarantine_service_server::QuarantineServiceServer,
        subscription_service_server::SubscriptionServiceServer,
        tenant_service_server::TenantServiceServer, watch_service_server::WatchServiceServer,
    },
};

pub use admin::{BACKUP_CHUNK_BYTES, BackupError, fetch_backup};
pub use eligibility::BATCH_PROFILE_IDS_MAX;
pub use status::ERROR_DOMAIN;

/// Largest request message of the profile, consent and quarantine services.
pub const DECODE_LIMIT_DEFAULT_BYTES: usize = 1024 * 1024;
/// Largest request message of the eligibility service: 10,000 ids of 256
/// bytes are 2.6 MB.
pub const DECODE_LIMIT_ELIGIBILITY_BYTES: usize = 8 * 1024 * 1024;
/// Largest response message of the profile, consent and quarantine services.
pub const ENCODE_LIMIT_DEFAULT_BYTES: usize = 8 * 1024 * 1024;
/// Largest response message of the eligibility service: 10,000 decisions.
pub const ENCODE_LIMIT_ELIGIBILITY_BYTES: usize = 64 * 1024 * 1024;
/// Largest request and response message of the product-usage service:
/// 10,000 events with payloads of a few hundred bytes each.
pub const MESSAGE_LIMIT_USAGE_BYTES: usize = 16 * 1024 * 1024;

/// The consent.v1 services, each with its message size limits.
#[derive(Debug)]
pub(crate) struct Services {
    /// `consent.v1.ProfileService`.
    pub(crate) profile: ProfileServiceServer<profile::ProfileApi>,
    /// `consent.v1.ConsentService`.
    pub(crate) consent: ConsentServiceServer<profile::ProfileApi>,
    /// `consent.v1.QuarantineService`.
    pub(crate) quarantine: QuarantineServiceServer<quarantine::QuarantineApi>,
    /// `consent.v1.EligibilityService`.
    pub(crate) eligibility: eligibility::EligibilityServer,
    /// `consent.v1.AdminService`.
    pub(crate) admin: AdminServiceServer<admin::AdminApi>,
    /// `consent.v1.TenantService`.
    pub(crate) tenant: TenantServiceServer<tenant::TenantApi>,
    /// `consent.v1.SubscriptionService`.
    pub(crate) subscription: SubscriptionServiceServer<subscription::SubscriptionApi>,
    /// `consent.v1.ProductUsageService`.
    pub(crate) usage: ProductUsageServiceServer<usage::UsageApi>,
    /// `consent.v1.WatchService`.
    pub(crate) watch: WatchServiceServer<watch::WatchApi>,
    /// `consent.v1.PreferenceService`.
    pub(crate) preference: PreferenceServiceServer<preference::PreferenceApi>,
}

impl Services {
    /// Builds every service over one application.
    pub(crate) fn new(app: &App) -> Self {
        let profiles = profile::ProfileApi { app: app.clone() };
        Self {
            profile: ProfileServiceServer::new(profiles.clone())
                .max_decoding_message_size(DECODE_LIMIT_DEFAULT_BYTES)
                .max_encoding_message_size(ENCODE_LIMIT_DEFAULT_BYTES),
            consent: ConsentServiceServer::new(profiles)
                .max_decoding_message_size(DECODE_LIMIT_DEFAULT_BYTES)
                .max_encoding_message_size(ENCODE_LIMIT_DEFAULT_BYTES),
            quarantine: QuarantineServiceServer::new(quarantine::QuarantineApi {
                app: app.clone(),
            })
            .max_decoding_message_size(DECODE_LIMIT_DEFAULT_BYTES)
            .max_encoding_message_size(ENCODE_LIMIT_DEFAULT_BYTES),
            eligibility: eligibility::EligibilityServer::new(
                eligibility::EligibilityApi { app: app.clone() },
                DECODE_LIMIT_ELIGIBILITY_BYTES,
                ENCODE_LIMIT_ELIGIBILITY_BYTES,
            ),
            admin: AdminServiceServer::new(admin::AdminApi { app: app.clone() })
                .max_decoding_message_size(DECODE_LIMIT_DEFAULT_BYTES)
                .max_encoding_message_size(ENCODE_LIMIT_DEFAULT_BYTES),
            tenant: TenantServiceServer::new(tenant::TenantApi { app: app.clone() })
                .max_decoding_message_size(DECODE_LIMIT_DEFAULT_BYTES)
                .max_encoding_message_size(ENCODE_LIMIT_DEFAULT_BYTES),
            subscription: SubscriptionServiceServer::new(subscription::SubscriptionApi {
                app: app.clone(),
            })
            .max_decoding_message_size(DECODE_LIMIT_DEFAULT_BYTES)
            .max_encoding_message_size(ENCODE_LIMIT_DEFAULT_BYTES),
            usage: ProductUsageServiceServer::new(usage::UsageApi { app: app.clone() })
                .max_decoding_message_size(MESSAGE_LIMIT_USAGE_BYTES)
                .max_encoding_message_size(MESSAGE_LIMIT_USAGE_BYTES),
            watch: WatchServiceServer::new(watch::WatchApi { app: app.clone() })
                .max_decoding_message_size(DECODE_LIMIT_DEFAULT_BYTES)
                .max_encoding_message_size(ENCODE_LIMIT_DEFAULT_BYTES),
            preference: PreferenceServiceServer::new(preference::PreferenceApi {
                app: app.clone(),
            })
            .max_decoding_message_size(DECODE_LIMIT_DEFAULT_BYTES)
            .max_encoding_message_size(ENCODE_LIMIT_DEFAULT_BYTES),
        }
    }
}
