//! The REST shim (docs/api.md): Palette's paths over the same core and authentication as gRPC.
//! Errors are mapped in one function, [`error_response`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kubeconfig_render::Request;
use serde::Serialize;

use crate::service::auth::{Credentials, PeerCertificate};
use crate::service::error::{CoreError, ErrorKind};
use crate::service::minting::MintOptions;
use crate::service::streams::Watchers;
use crate::telemetry;
use tracing::Instrument as _;

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(rename = "ref")]
    reference: &'a str,
}

/// Maps a core error to a response: status code and `{"code", "message", "ref"}`.
pub fn error_response(error: &CoreError, request_id: &str) -> Response {
    let status = match error.kind() {
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = rest_names(error.message());
    let body = ErrorBody {
        code: error.kind().palette_code(),
        message: &message,
        reference: request_id,
    };
    // One JSON object and a newline, so that `curl` output ends its line.
    let mut text = serde_json::to_vec(&body).unwrap_or_default();
    text.push(b'\n');
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response();
    if let Some(reason) = error.reason() {
        response
            .headers_mut()
            .insert("x-deny-reason", HeaderValue::from_static(reason));
    }
    if error.kind() == ErrorKind::Unauthenticated {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer, ApiKey"),
        );
    }
    // The same id as the body's `ref`, where a proxy or client logs headers only.
    set_request_id(&mut response, request_id);
    response
}

/// Every answer to a call carries its request id (the audit record's `request_id`) in `x-request-id`.
fn set_request_id(response: &mut Response, request_id: &str) {
    const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
    if let Ok(value) = HeaderValue::from_str(request_id) {
        // A download's headers hold a placeholder: replaced in place (an insert would first make
        // room for one more header), found by comparing names rather than hashing one.
        match response
            .headers_mut()
            .iter_mut()
            .find(|(name, _)| **name == REQUEST_ID)
        {
            Some((_, placeholder)) => *placeholder = value,
            None => {
                response.headers_mut().insert(REQUEST_ID, value);
            }
        }
    }
}

/// A core message with the request fields it names spelled as this edge's parameters
/// (`expiration_seconds` is the query parameter `expirationSeconds` here).
fn rest_names(message: &str) -> std::borrow::Cow<'_, str> {
    const NAMES: &[(&str, &str)] = &[("expiration_seconds", "expirationSeconds")];
    let mut message = std::borrow::Cow::Borrowed(message);
    for (grpc, rest) in NAMES {
        if message.contains(grpc) {
            message = std::borrow::Cow::Owned(message.replace(grpc, rest));
        }
    }
    message
}

/// The one etag of an `If-None-Match` header (a long-poll waits on one file version).
fn single_etag(if_none_match: &str) -> Option<String> {
    let candidate = if_none_match.trim();
    (!candidate.contains(',') && candidate != "*").then(|| {
        candidate
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_owned()
    })
}

/// Whether an `If-None-Match` header matches the ETag (strong or weak, a list, or `*`).
fn matches_etag(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.trim_start_matches("W/").trim_matches('"') == etag
    })
}

const KUBECONFIG_ROUTE: &str = "/v1/spectroclusters/{uid}/assets/kubeconfig";
const ADMIN_ROUTE: &str = "/v1/spectroclusters/{uid}/assets/adminkubeconfig";

const WHOAMI_ROUTE: &str = "/v1/whoami";

/// The REST paths, as routed (the OpenAPI document lists the same; a test keeps them equal).
pub const ROUTES: [&str; 5] = [
    KUBECONFIG_ROUTE,
    ADMIN_ROUTE,
    "/v1/spectroclusters/{uid}/assets/adminKubeconfig",
    WHOAMI_ROUTE,
    "/healthz",
];

/// The REST router over the core of `watchers`. Every error, including unknown paths, wrong methods,
/// undecodable paths or queries and calls past the core's deadline (`--request-timeout`), answers with
/// the `{code, message, ref}` body. A download with `If-None-Match` and `?wait=DURATION` is a long-poll:
/// it answers as soon as the file changes or access to it ends, or 304 when the wait is over (the
/// wait does not count against the deadline; the download that follows does).
pub fn router(watchers: Arc<Watchers>) -> Router {
    Router::new()
        .route(KUBECONFIG_ROUTE, get(kubeconfig))
        .route(ADMIN_ROUTE, get(admin_kubeconfig))
        .route(ROUTES[2], get(admin_kubeconfig))
        .route(WHOAMI_ROUTE, get(whoami))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(RestState { watchers })
}

/// The longest `?wait=` a long-poll may ask for.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Clone)]
struct RestState {
    watchers: Arc<Watchers>,
}

/// `?wait=`: whole seconds up to `300s`, or whole minutes up to `5m` — exactly the values the OpenAPI
/// document's pattern allows, so anything it calls valid is served and anything else is 400.
fn wait_parameter(
    query: &HashMap<String, String>,
) -> Result<Option<std::time::Duration>, CoreError> {
    let Some(text) = query.get("wait") else {
        return Ok(None);
    };
    parse_wait(text).map(Some).ok_or_else(|| {
        CoreError::bad_request(format!(
            "wait must be whole seconds up to 300s or whole minutes up to {} (e.g. 30s)",
            humantime::format_duration(MAX_WAIT)
        ))
    })
}

fn parse_wait(text: &str) -> Option<std::time::Duration> {
    let number = |digits: &str, max: u64| {
        let canonical = !digits.is_empty()
            && digits.len() <= 3
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        canonical
            .then(|| digits.parse::<u64>().ok())
            .flatten()
            .filter(|n| *n <= max)
    };
    if let Some(seconds) = text.strip_suffix('s') {
        return number(seconds, 300).map(std::time::Duration::from_secs);
    }
    let minutes = number(text.strip_suffix('m')?, 5).filter(|m| *m >= 1)?;
    Some(std::time::Duration::from_secs(minutes * 60))
}

#[cfg(test)]
mod wait_tests {
    use super::*;

    #[test]
    fn wait_accepts_exactly_the_documented_values() {
        let pattern = |text: &str| {
            // ^((300|[12][0-9]{2}|[1-9]?[0-9])s|[1-5]m)$, spelled out.
            let seconds = text.strip_suffix('s').is_some_and(|d| {
                d == "300"
                    || (d.len() == 3
                        && matches!(d.as_bytes()[0], b'1' | b'2')
                        && d[1..].bytes().all(|b| b.is_ascii_digit()))
                    || (d.len() == 2
                        && matches!(d.as_bytes()[0], b'1'..=b'9')
                        && d.as_bytes()[1].is_ascii_digit())
                    || (d.len() == 1 && d.as_bytes()[0].is_ascii_digit())
            });
            let minutes = text
                .strip_suffix('m')
                .is_some_and(|d| matches!(d.as_bytes(), [b'1'..=b'5']));
            seconds || minutes
        };
        for text in [
            "0",
            "0s",
            "00s",
            "05s",
            "5s",
            "30s",
            "299s",
            "300s",
            "301s",
            "999s",
            "1000s",
            "0m",
            "1m",
            "5m",
            "6m",
            "10m",
            "30",
            "s",
            "m",
            "1h",
            "-1s",
            "+5s",
            "682914436ms",
        ] {
            assert_eq!(parse_wait(text).is_some(), pattern(text), "{text}");
        }
        assert_eq!(parse_wait("5m"), Some(std::time::Duration::from_secs(300)));
        assert_eq!(parse_wait("30s"), Some(std::time::Duration::from_secs(30)));
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// An error answer outside a handler (routing, extraction), with a fresh request id.
pub fn plain_error(kind: ErrorKind, message: &str) -> Response {
    let request_id = telemetry::new_request_id();
    error_response(&CoreError::new(kind, message), &request_id)
}

async fn not_found() -> Response {
    plain_error(ErrorKind::NotFound, "no such path")
}

async fn method_not_allowed() -> Response {
    let mut response = plain_error(
        ErrorKind::MethodNotAllowed,
        "only GET and HEAD are served on this path",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

/// The uid from the path, or `None` when the path does not decode (e.g. bad UTF-8).
fn path_uid(path: Result<Path<String>, PathRejection>) -> Option<String> {
    path.ok().map(|Path(uid)| uid)
}

fn undecodable_path() -> Response {
    plain_error(ErrorKind::BadRequest, "the path does not decode as UTF-8")
}

fn bad_query(state: &RestState, method: &'static str, error: &CoreError) -> Response {
    let request_id = telemetry::new_request_id();
    state.watchers.core().metrics().call(
        "rest",
        method,
        ErrorKind::BadRequest.palette_code(),
        std::time::Duration::ZERO,
    );
    error_response(error, &request_id)
}

async fn kubeconfig(
    State(state): State<RestState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    // Taken whole (it is the last extractor) so that its headers are borrowed, not cloned.
    request: axum::extract::Request,
) -> Response {
    let request_of = |query: &HashMap<String, String>| match query.get("frp").map(String::as_str) {
        None | Some("true") => Ok((Request::Kubeconfig { frp: true }, MintOptions::default())),
        Some("false") => Ok((Request::Kubeconfig { frp: false }, MintOptions::default())),
        Some(_) => Err(CoreError::bad_request("frp must be true or false")),
    };
    download(
        &state,
        ("GetKubeconfig", KUBECONFIG_ROUTE),
        path,
        query,
        (
            request.headers(),
            long_poll_of(&request),
            crate::edges::connections::rest_certificate(&request),
        ),
        request_of,
    )
    .await
}

async fn admin_kubeconfig(
    State(state): State<RestState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    // Taken whole (it is the last extractor) so that its headers are borrowed, not cloned.
    request: axum::extract::Request,
) -> Response {
    download(
        &state,
        ("GetAdminKubeconfig", ADMIN_ROUTE),
        path,
        query,
        (
            request.headers(),
            long_poll_of(&request),
            crate::edges::connections::rest_certificate(&request),
        ),
        |query| {
            let expiration_seconds = query
                .get("expirationSeconds")
                .map(|value| {
                    value.parse::<i64>().map_err(|_| {
                        CoreError::bad_request(
                            "expirationSeconds must be a whole number of seconds",
                        )
                    })
                })
                .transpose()?;
            let options = MintOptions {
                expiration_seconds,
                client_key: None,
                reason: query.get("reason").cloned().unwrap_or_default(),
            };
            Ok((Request::AdminKubeconfig, options))
        },
    )
    .await
}

/// `WhoAmI` as JSON, with the field names and value forms of the gRPC answer's JSON mapping
/// (camelCase, enum names, RFC 3339 times) so that grpcurl and curl print the same thing.
async fn whoami(State(state): State<RestState>, request: axum::extract::Request) -> Response {
    let core = state.watchers.core();
    let request_id = telemetry::new_request_id();
    let span = telemetry::rest_span(WHOAMI_ROUTE, &request_id, request.headers());
    let credentials = credentials_of(&request, request_id);
    let result = core
        .run("rest", "WhoAmI", core.whoami(&credentials))
        .instrument(span)
        .await;
    match result {
        Ok(whoami) => {
            let mut response = axum::Json(WhoamiBody::of(&whoami)).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => error_response(&error, &request_id),
    }
}

/// The credentials of a REST request: its headers and its connection's client certificate.
fn credentials_of(
    request: &axum::extract::Request,
    request_id: telemetry::RequestId,
) -> Credentials {
    Credentials::from_headers(request.headers(), request_id)
        .with_certificate(crate::edges::connections::rest_certificate(request))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WhoamiBody<'a> {
    user: &'a str,
    groups: &'a [String],
    teams: &'a [String],
    credentials: Vec<CallerCredentialBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    visible_clusters: usize,
    #[serde(skip_serializing_if = "str::is_empty")]
    project_uid: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallerCredentialBody<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    issuer: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    serial: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

fn rfc3339(seconds: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds),
    )
    .to_string()
}

impl<'a> WhoamiBody<'a> {
    fn of(whoami: &'a crate::service::core::Whoami) -> Self {
        use crate::service::auth::Method;
        let caller = &whoami.caller;
        WhoamiBody {
            user: &caller.user,
            groups: &caller.groups,
            teams: &whoami.teams,
            credentials: caller
                .proofs
                .iter()
                .map(|proof| {
                    let (kind, issuer, serial) = match &proof.method {
                        Method::ApiKey => ("CREDENTIAL_KIND_API_KEY", "", ""),
                        Method::Token { issuer } => ("CREDENTIAL_KIND_TOKEN", &**issuer, ""),
                        Method::Certificate { serial, issuer } => {
                            ("CREDENTIAL_KIND_CLIENT_CERTIFICATE", &**issuer, &**serial)
                        }
                    };
                    CallerCredentialBody {
                        kind,
                        issuer,
                        serial,
                        expires_at: proof.expires_at.map(rfc3339),
                    }
                })
                .collect(),
            expires_at: caller.expires_at().map(rfc3339),
            visible_clusters: whoami.visible_clusters,
            project_uid: caller.project.as_deref().unwrap_or_default(),
        }
    }
}

/// The connection's long-poll marker, on a request that may be a long-poll.
fn long_poll_of(request: &axum::extract::Request) -> Option<crate::edges::connections::LongPoll> {
    request
        .extensions()
        .get::<crate::edges::connections::LongPoll>()
        .cloned()
}

/// A download: the path and query decoded (`request` reads the asset's own parameters), then served.
async fn download(
    state: &RestState,
    (method, route): (&'static str, &'static str),
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    (headers, long_poll, certificate): (
        &HeaderMap,
        Option<crate::edges::connections::LongPoll>,
        Option<Arc<PeerCertificate>>,
    ),
    request: impl FnOnce(&HashMap<String, String>) -> Result<(Request, MintOptions), CoreError>,
) -> Response {
    let Some(uid) = path_uid(path) else {
        return undecodable_path();
    };
    let Ok(Query(query)) = query else {
        return plain_error(ErrorKind::BadRequest, "the query string does not decode");
    };
    let parameters = request(&query).and_then(|request| Ok((request, wait_parameter(&query)?)));
    match parameters {
        Ok(((request, options), wait)) => {
            serve(
                state,
                (method, route),
                &uid,
                (request, &options),
                (headers, certificate),
                (wait, long_poll.as_ref()),
            )
            .await
        }
        Err(error) => bad_query(state, method, &error),
    }
}

async fn serve(
    state: &RestState,
    (method, route): (&'static str, &'static str),
    uid: &str,
    (request, options): (Request, &MintOptions),
    (headers, certificate): (&HeaderMap, Option<Arc<PeerCertificate>>),
    (wait, long_poll): (
        Option<std::time::Duration>,
        Option<&crate::edges::connections::LongPoll>,
    ),
) -> Response {
    let core = state.watchers.core();
    let request_id = telemetry::new_request_id();
    let span = telemetry::rest_span(route, &request_id, headers);
    let credentials = Credentials::from_headers(headers, request_id).with_certificate(certificate);
    // Looked up once: the long-poll and the answer both read it.
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    // A long-poll first waits (outside the request timeout) until the file differs from the one
    // the client holds, then answers as any download does.
    if let (Some(wait), Some(held)) = (wait, if_none_match)
        && let Some(etag) = single_etag(held)
    {
        // While an authenticated caller waits, its connection serves a watch (never evicted, never
        // closed for want of progress); the caller's watch limits bound how many it holds.
        let authenticated = core.authenticate(&credentials).await.is_ok();
        let _watching = long_poll
            .filter(|_| authenticated)
            .map(crate::edges::connections::LongPoll::hold);
        // Boxed: a long-poll's state is large and only this path needs it.
        let waited = Box::pin(state.watchers.wait_for_change(
            &credentials,
            uid,
            (request, options),
            &etag,
            wait,
        ))
        .instrument(span.clone())
        .await;
        if let Err(refused) = waited {
            let result = core
                .run("rest", method, std::future::ready(Err(refused)))
                .instrument(span.clone())
                .await;
            return respond(result, if_none_match, &request_id);
        }
    }
    let result = core
        .run(
            "rest",
            method,
            core.asset(&credentials, uid, request, options),
        )
        .instrument(span.clone())
        .await;
    let response = respond(result, if_none_match, &request_id);
    span.record(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    response
}

/// A served file's YAML as a response body.
struct Yaml(Arc<crate::service::cached::CachedAsset>);

impl AsRef<[u8]> for Yaml {
    fn as_ref(&self) -> &[u8] {
        self.0.0.yaml.as_bytes()
    }
}

fn respond(
    result: Result<crate::service::core::Served, CoreError>,
    if_none_match: Option<&str>,
    request_id: &str,
) -> Response {
    let served = match result {
        Ok(served) => served,
        Err(error) => {
            if error.kind() == ErrorKind::Internal {
                tracing::error!(request_id = %request_id, error = %error, "internal error");
            }
            return error_response(&error, request_id);
        }
    };
    let rendered = &served.rendered.0;
    let file_headers = served.rendered.http_headers();
    if if_none_match.is_some_and(|v| matches_etag(v, &rendered.etag)) {
        let mut response = (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, file_headers.etag.clone()),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response();
        set_request_id(&mut response, request_id);
        return response;
    }
    let download_headers = file_headers.download.clone();
    // The body shares the cached bytes (kept alive by the response) instead of copying them.
    let mut response = Response::new(axum::body::Body::from(bytes::Bytes::from_owner(Yaml(
        served.rendered,
    ))));
    // The file's own headers, made once per cached file; the request id overwrites its placeholder.
    *response.headers_mut() = download_headers;
    set_request_id(&mut response, request_id);
    if let Some(credential) = &served.credential {
        let entry = &credential.entry;
        let expires = std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::from_secs(entry.not_after))
            .map(|at| humantime::format_rfc3339_seconds(at).to_string())
            .unwrap_or_default();
        for (name, value) in [
            ("x-credential-expires", expires.as_str()),
            ("x-credential-serial", entry.serial.as_str()),
            ("x-credential-fingerprint", entry.fingerprint.as_str()),
            (
                "x-credential-lifetime-clamped",
                if entry.clamped { "true" } else { "false" },
            ),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        assert!(matches_etag("\"abc\"", "abc"));
        assert!(matches_etag("W/\"abc\"", "abc"));
        assert!(matches_etag("\"x\", \"abc\"", "abc"));
        assert!(matches_etag("*", "abc"));
        assert!(!matches_etag("\"abd\"", "abc"));
    }
}
