//! The gRPC edge: `kubeconfig.v1.KubeconfigService` over the core. Converts between proto messages
//! and core types, and maps [`CoreError`] to a `tonic::Status` in one function, [`status`].

use std::sync::Arc;

use kubeconfig_policy::{OidcGap, OidcSource, OidcState};
use kubeconfig_proto::kubeconfig::v1 as pb;
use kubeconfig_render::{AuthKind, Rendered, Request, ServerKind};
use tonic::{Code, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use std::collections::HashMap;

use kubeconfig_policy::Asset;

use crate::service::auth::Credentials;
use crate::service::core::{AccessReport, AssetAccess, CheckSubject, Core, CredentialStatus};
use crate::service::error::{CoreError, ErrorKind};
use crate::service::ledger::LedgerEntry;
use crate::service::minting::{MintOptions, MintedCredential};
use crate::service::streams::{WatchEvent, WatchSpec, Watchers};
use crate::telemetry;
use tracing::Instrument as _;

/// The `google.rpc.ErrorInfo` domain of our errors.
pub const ERROR_DOMAIN: &str = "kubeconfig.v1";

/// Maps a core error to a gRPC status carrying the Palette code as the `ErrorInfo` reason.
pub fn status(error: &CoreError, request_id: &str) -> Status {
    let code = match error.kind() {
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Forbidden => Code::PermissionDenied,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::BadRequest => Code::InvalidArgument,
        ErrorKind::TooManyRequests => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::MethodNotAllowed => Code::Unimplemented,
        ErrorKind::Internal => Code::Internal,
    };
    let mut metadata = std::collections::HashMap::from([("ref".to_owned(), request_id.to_owned())]);
    if let Some(reason) = error.reason() {
        metadata.insert("denyReason".to_owned(), reason.to_owned());
    }
    let details =
        ErrorDetails::with_error_info(error.kind().palette_code(), ERROR_DOMAIN, metadata);
    Status::with_error_details(code, error.message(), details)
}

fn kubeconfig_message(rendered: &Rendered) -> pb::Kubeconfig {
    pb::Kubeconfig {
        yaml: rendered.yaml.clone(),
        file_name: rendered.file_name.clone(),
        etag: rendered.etag.clone(),
        server_kind: match rendered.server_kind {
            ServerKind::Proxy => pb::ServerKind::Proxy,
            ServerKind::Direct => pb::ServerKind::Direct,
        } as i32,
        auth_kind: match rendered.auth_kind {
            AuthKind::Oidc => pb::AuthKind::Oidc,
            AuthKind::ClientCertificate => pb::AuthKind::ClientCertificate,
            AuthKind::Token => pb::AuthKind::Token,
        } as i32,
    }
}

fn asset_access(access: &AssetAccess) -> pb::AssetAccess {
    pb::AssetAccess {
        allowed: access.allowed,
        reason: access.reason.clone(),
        message: access.message.clone(),
    }
}

fn oidc_facts(oidc: Option<&OidcState>) -> pb::OidcFacts {
    let Some(state) = oidc else {
        return pb::OidcFacts::default();
    };
    let gaps = state
        .gaps()
        .iter()
        .map(|g: &OidcGap| pb::OidcGap {
            code: g.code().to_owned(),
            message: g.to_string(),
        })
        .collect();
    match state {
        OidcState::Configured { login, source } => pb::OidcFacts {
            configured: true,
            source: match source {
                OidcSource::PackValues => "pack-values",
                OidcSource::TenantSettings => "tenant-settings",
            }
            .to_owned(),
            issuer_url: login.issuer_url.clone(),
            client_id: login.client_id.clone(),
            gaps,
        },
        OidcState::NotConfigured { .. } => pb::OidcFacts {
            gaps,
            ..Default::default()
        },
    }
}

/// Converts an access report to its message.
pub fn cluster_access(report: &AccessReport) -> pb::ClusterAccess {
    let cluster = &report.cluster;
    pb::ClusterAccess {
        uid: cluster.uid().to_string(),
        name: cluster.name().to_string(),
        project: cluster.project().to_string(),
        kubeconfig: Some(asset_access(&report.kubeconfig)),
        admin_kubeconfig: Some(asset_access(&report.admin_kubeconfig)),
        oidc: Some(oidc_facts(report.oidc.as_deref())),
        proxy_enabled: cluster.proxy_enabled,
        policy_mode: report.policy.as_str().to_owned(),
        permissions: report
            .permissions
            .iter()
            .map(|op| format!("cluster.{}", op.as_str()))
            .collect(),
        status: if cluster.is_ready() {
            pb::ClusterStatus::Available
        } else {
            pb::ClusterStatus::Unavailable
        } as i32,
        problems: report.problems.clone(),
    }
}

/// The tonic service implementation.
#[derive(Debug, Clone)]
pub struct KubeconfigApi {
    core: Arc<Core>,
    watchers: Arc<Watchers>,
}

fn watched_asset(asset: Asset) -> pb::WatchedAsset {
    match asset {
        Asset::Kubeconfig => pb::WatchedAsset::Kubeconfig,
        Asset::AdminKubeconfig => pb::WatchedAsset::AdminKubeconfig,
    }
}

/// The watch request in core terms, or why it is invalid.
fn watch_spec(message: pb::WatchKubeconfigsRequest) -> Result<WatchSpec, CoreError> {
    let mut assets = Vec::new();
    for value in &message.assets {
        match pb::WatchedAsset::try_from(*value) {
            Ok(pb::WatchedAsset::Kubeconfig) => assets.push(Asset::Kubeconfig),
            Ok(pb::WatchedAsset::AdminKubeconfig) => assets.push(Asset::AdminKubeconfig),
            _ => {
                return Err(CoreError::bad_request(format!(
                    "assets: {value} is not a watched asset (1 kubeconfig, 2 admin kubeconfig)"
                )));
            }
        }
    }
    let mut known = HashMap::new();
    for (key, etag) in message.known_etags {
        let parsed = key.split_once('/').and_then(|(uid, asset)| {
            let asset = Asset::ALL.into_iter().find(|a| a.as_str() == asset)?;
            Some((uid.to_owned(), asset))
        });
        let Some(parsed) = parsed else {
            let key: String = key.chars().take(80).collect();
            return Err(CoreError::bad_request(format!(
                "known_etags: key {key:?} must be <cluster uid>/kubeconfig or <cluster uid>/admin-kubeconfig"
            )));
        };
        known.insert(parsed, etag);
    }
    if !message.cluster_uids.is_empty() && !message.project_uid.is_empty() {
        return Err(CoreError::bad_request(
            "project_uid narrows \"every visible cluster\"; give it without cluster_uids",
        ));
    }
    Ok(WatchSpec {
        uids: message.cluster_uids,
        project: (!message.project_uid.is_empty()).then_some(message.project_uid),
        assets,
        frp: message.frp.unwrap_or(true),
        known,
    })
}

fn watch_message(event: WatchEvent) -> pb::WatchKubeconfigsResponse {
    use pb::watch_kubeconfigs_response::Type;
    let mut message = pb::WatchKubeconfigsResponse::default();
    match event {
        WatchEvent::Upsert {
            uid,
            name,
            asset,
            rendered,
        } => {
            message.set_type(Type::Upsert);
            message.cluster_uid = uid;
            message.cluster_name = name;
            message.set_asset(watched_asset(asset));
            message.kubeconfig = Some(kubeconfig_message(&rendered.0));
        }
        WatchEvent::Revoked {
            uid,
            name,
            asset,
            reason,
            message: text,
        } => {
            message.set_type(Type::Revoked);
            message.cluster_uid = uid;
            message.cluster_name = name;
            message.set_asset(watched_asset(asset));
            message.reason = reason;
            message.message = text;
        }
        WatchEvent::Removed {
            uid,
            asset,
            message: text,
        } => {
            message.set_type(Type::Removed);
            message.cluster_uid = uid;
            message.set_asset(watched_asset(asset));
            message.reason = crate::service::core::NOT_FOUND_REASON.to_owned();
            message.message = text;
        }
        WatchEvent::Unavailable {
            uid,
            name,
            asset,
            message: text,
        } => {
            message.set_type(Type::Unavailable);
            message.cluster_uid = uid;
            message.cluster_name = name;
            message.set_asset(watched_asset(asset));
            message.reason = crate::loading::record::ProblemCode::ClusterUnavailable
                .as_str()
                .to_owned();
            message.message = text;
        }
        WatchEvent::Synced => message.set_type(Type::Synced),
    }
    message
}

impl KubeconfigApi {
    pub fn new(core: Arc<Core>, watchers: Arc<Watchers>) -> Self {
        KubeconfigApi { core, watchers }
    }

    async fn call<T, F, Fut>(
        &self,
        (metadata, certificate): crate::edges::connections::GrpcMetadata,
        method: &'static str,
        f: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(Arc<Core>, Credentials) -> Fut,
        Fut: std::future::Future<Output = Result<T, CoreError>>,
    {
        let request_id = telemetry::new_request_id();
        let headers = metadata.into_headers();
        let span = telemetry::grpc_span(method, &request_id, &headers);
        let result = self
            .core
            .run(
                "grpc",
                method,
                f(
                    Arc::clone(&self.core),
                    Credentials::from_headers(&headers, request_id).with_certificate(certificate),
                ),
            )
            .instrument(span.clone())
            .await;
        let status = match &result {
            Ok(_) => None,
            Err(error) => Some(status(error, &request_id)),
        };
        span.record(
            "rpc.grpc.status_code",
            status.as_ref().map_or(0, |s| i64::from(s.code() as i32)),
        );
        match (result, status) {
            (Ok(message), _) => {
                const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
                // Room for the request id and what tonic adds on the way out (content-type), so the
                // map is allocated once, with the header's name built at compile time.
                let mut headers = http::HeaderMap::with_capacity(4);
                if let Ok(mut value) = http::HeaderValue::from_str(request_id.as_str()) {
                    // A value unique to this response: sent as a literal that HPACK never indexes
                    // ("sensitive"), instead of entering the connection's header table, where it
                    // would only evict entries worth keeping at the cost of the insertion.
                    value.set_sensitive(true);
                    headers.insert(REQUEST_ID, value);
                }
                Ok(Response::from_parts(
                    tonic::metadata::MetadataMap::from_headers(headers),
                    message,
                    tonic::Extensions::default(),
                ))
            }
            (Err(error), status) => {
                if error.kind() == ErrorKind::Internal {
                    tracing::error!(parent: &span, method, request_id = %request_id, error = %error, "internal error");
                }
                Err(status.unwrap_or_else(|| Status::internal("internal error")))
            }
        }
    }
}

#[tonic::async_trait]
impl pb::kubeconfig_service_server::KubeconfigService for KubeconfigApi {
    type WatchKubeconfigsStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<pb::WatchKubeconfigsResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn watch_kubeconfigs(
        &self,
        request: tonic::Request<pb::WatchKubeconfigsRequest>,
    ) -> Result<Response<Self::WatchKubeconfigsStream>, Status> {
        use tokio_stream::StreamExt as _;
        let ((metadata, certificate), message) = crate::edges::connections::grpc_parts(request);
        let request_id = telemetry::new_request_id();
        let headers = metadata.into_headers();
        let started = std::time::Instant::now();
        let opened = match watch_spec(message) {
            Ok(spec) => {
                self.watchers
                    .open(
                        Credentials::from_headers(&headers, request_id)
                            .with_certificate(certificate),
                        spec,
                    )
                    .await
            }
            Err(error) => Err(error),
        };
        let code = crate::service::error::code_of(&opened);
        self.core
            .metrics()
            .call("grpc", "WatchKubeconfigs", code, started.elapsed());
        let events = opened.map_err(|error| status(&error, &request_id))?;
        tracing::info!(request_id = %request_id, "watch opened");
        let stream = tokio_stream::wrappers::ReceiverStream::new(events).map(move |item| {
            item.map(watch_message)
                .map_err(|error| status(&error, &request_id))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_kubeconfig(
        &self,
        request: tonic::Request<pb::GetKubeconfigRequest>,
    ) -> Result<Response<pb::GetKubeconfigResponse>, Status> {
        let (metadata, message) = crate::edges::connections::grpc_parts(request);
        let frp = message.frp.unwrap_or(true);
        self.call(metadata, "GetKubeconfig", |core, creds| async move {
            let served = core
                .asset(
                    &creds,
                    &message.uid,
                    Request::Kubeconfig { frp },
                    &MintOptions::default(),
                )
                .await?;
            Ok(pb::GetKubeconfigResponse {
                kubeconfig: Some(kubeconfig_message(&served.rendered.0)),
                credential: served.credential.as_deref().map(issued_credential_of),
            })
        })
        .await
    }

    async fn get_admin_kubeconfig(
        &self,
        request: tonic::Request<pb::GetAdminKubeconfigRequest>,
    ) -> Result<Response<pb::GetAdminKubeconfigResponse>, Status> {
        let (metadata, message) = crate::edges::connections::grpc_parts(request);
        self.call(metadata, "GetAdminKubeconfig", |core, creds| async move {
            use pb::get_admin_kubeconfig_request::ClientKey;
            let options = MintOptions {
                expiration_seconds: message.expiration_seconds,
                client_key: message.client_key.map(|key| match key {
                    ClientKey::PublicKey(pem) | ClientKey::Csr(pem) => pem,
                }),
                reason: message.reason,
            };
            let served = core
                .asset(&creds, &message.uid, Request::AdminKubeconfig, &options)
                .await?;
            Ok(pb::GetAdminKubeconfigResponse {
                kubeconfig: Some(kubeconfig_message(&served.rendered.0)),
                credential: served.credential.as_deref().map(issued_credential_of),
            })
        })
        .await
    }

    async fn get_kubeconfig_access(
        &self,
        request: tonic::Request<pb::GetKubeconfigAccessRequest>,
    ) -> Result<Response<pb::GetKubeconfigAccessResponse>, Status> {
        let (metadata, message) = crate::edges::connections::grpc_parts(request);
        self.call(metadata, "GetKubeconfigAccess", |core, creds| async move {
            let report = core.access(&creds, &message.uid).await?;
            Ok(pb::GetKubeconfigAccessResponse {
                access: Some(cluster_access(&report)),
            })
        })
        .await
    }

    async fn list_clusters(
        &self,
        request: tonic::Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let (metadata, message) = crate::edges::connections::grpc_parts(request);
        self.call(metadata, "ListClusters", |core, creds| async move {
            let page = core
                .list(&creds, message.page_size, &message.page_token)
                .await?;
            Ok(pb::ListClustersResponse {
                clusters: page.clusters.iter().map(cluster_access).collect(),
                next_page_token: page.next_page_token,
            })
        })
        .await
    }

    async fn check_kubeconfig(
        &self,
        request: tonic::Request<pb::CheckKubeconfigRequest>,
    ) -> Result<Response<pb::CheckKubeconfigResponse>, Status> {
        use pb::check_kubeconfig_request::Subject;
        let (metadata, message) = crate::edges::connections::grpc_parts(request);
        self.call(metadata, "CheckKubeconfig", |core, creds| async move {
            let subject = match &message.subject {
                Some(Subject::Kubeconfig(text)) => CheckSubject::Kubeconfig(text),
                Some(Subject::Fingerprint(fingerprint)) => CheckSubject::Fingerprint(fingerprint),
                None => {
                    return Err(CoreError::bad_request(
                        "give the kubeconfig or the certificate's fingerprint",
                    ));
                }
            };
            let check = core.check_credential(&creds, subject).await?;
            Ok(pb::CheckKubeconfigResponse {
                status: credential_status(check.status) as i32,
                reason: check.reason,
                credential: check.entry.as_ref().map(|e| ledger_entry(e, false)),
            })
        })
        .await
    }

    async fn revoke_credential(
        &self,
        request: tonic::Request<pb::RevokeCredentialRequest>,
    ) -> Result<Response<pb::RevokeCredentialResponse>, Status> {
        let (metadata, message) = crate::edges::connections::grpc_parts(request);
        self.call(metadata, "RevokeCredential", |core, creds| async move {
            let entry = core
                .revoke_credential(&creds, &message.serial, &message.reason)
                .await?;
            Ok(pb::RevokeCredentialResponse {
                credential: Some(ledger_entry(&entry, false)),
            })
        })
        .await
    }

    async fn list_issued_credentials(
        &self,
        request: tonic::Request<pb::ListIssuedCredentialsRequest>,
    ) -> Result<Response<pb::ListIssuedCredentialsResponse>, Status> {
        let (metadata, message) = crate::edges::connections::grpc_parts(request);
        self.call(
            metadata,
            "ListIssuedCredentials",
            |core, creds| async move {
                let (entries, next_page_token) = core
                    .issued_credentials(
                        &creds,
                        &message.cluster_uid,
                        message.page_size,
                        &message.page_token,
                    )
                    .await?;
                Ok(pb::ListIssuedCredentialsResponse {
                    credentials: entries.iter().map(|e| ledger_entry(e, false)).collect(),
                    next_page_token,
                })
            },
        )
        .await
    }

    async fn who_am_i(
        &self,
        request: tonic::Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let (metadata, _) = crate::edges::connections::grpc_parts(request);
        self.call(metadata, "WhoAmI", |core, creds| async move {
            Ok(whoami_message(&core.whoami(&creds).await?))
        })
        .await
    }
}

/// The `WhoAmI` answer.
fn whoami_message(whoami: &crate::service::core::Whoami) -> pb::WhoAmIResponse {
    use crate::service::auth::Method;
    let caller = &whoami.caller;
    let credentials = caller
        .proofs
        .iter()
        .map(|proof| {
            let (kind, issuer, serial) = match &proof.method {
                Method::ApiKey => (pb::CredentialKind::ApiKey, "", ""),
                Method::Token { issuer } => (pb::CredentialKind::Token, &**issuer, ""),
                Method::Certificate { serial, issuer } => {
                    (pb::CredentialKind::ClientCertificate, &**issuer, &**serial)
                }
            };
            pb::CallerCredential {
                kind: kind.into(),
                issuer: issuer.to_owned(),
                serial: serial.to_owned(),
                expires_at: proof.expires_at.map(timestamp),
            }
        })
        .collect();
    pb::WhoAmIResponse {
        user: caller.user.to_string(),
        groups: caller.groups.to_vec(),
        teams: whoami.teams.clone(),
        credentials,
        expires_at: caller.expires_at().map(timestamp),
        visible_clusters: i32::try_from(whoami.visible_clusters).unwrap_or(i32::MAX),
        project_uid: caller.project.clone().unwrap_or_default(),
    }
}

fn timestamp(seconds: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

fn ledger_entry(entry: &LedgerEntry, reused: bool) -> pb::IssuedCredential {
    pb::IssuedCredential {
        serial: entry.serial.clone(),
        fingerprint: entry.fingerprint.clone(),
        cluster_uid: entry.cluster.clone(),
        kubernetes_user: entry.kubernetes_user.clone(),
        kubernetes_group: entry.kubernetes_group.clone(),
        issued_to: entry.issued_to.clone(),
        issued_at: Some(timestamp(entry.issued_at)),
        not_before: Some(timestamp(entry.not_before)),
        expires_at: Some(timestamp(entry.not_after)),
        requested_seconds: i64::try_from(entry.requested_seconds).unwrap_or(i64::MAX),
        granted_seconds: i64::try_from(entry.granted_seconds).unwrap_or(i64::MAX),
        clamped: entry.clamped,
        reused,
        caller_key: entry.caller_key,
        reason: entry.reason.clone(),
        request_id: entry.request_id.clone(),
        revoked: entry.revoked.is_some(),
        revoked_at: entry.revoked.as_ref().map(|r| timestamp(r.at)),
        revoked_by: entry
            .revoked
            .as_ref()
            .map(|r| r.by.clone())
            .unwrap_or_default(),
        revocation_reason: entry
            .revoked
            .as_ref()
            .map(|r| r.reason.clone())
            .unwrap_or_default(),
    }
}

/// Boxed, as the answers hold it (see the proto crate's build script).
fn issued_credential_of(credential: &MintedCredential) -> Box<pb::IssuedCredential> {
    Box::new(ledger_entry(&credential.entry, credential.reused))
}

fn credential_status(status: CredentialStatus) -> pb::CredentialStatus {
    match status {
        CredentialStatus::Current => pb::CredentialStatus::Current,
        CredentialStatus::Stale => pb::CredentialStatus::Stale,
        CredentialStatus::Expired => pb::CredentialStatus::Expired,
        CredentialStatus::Revoked => pb::CredentialStatus::Revoked,
        CredentialStatus::Unknown => pb::CredentialStatus::Unknown,
    }
}
