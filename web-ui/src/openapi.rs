//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers'
//! own annotations (utoipa) and served at `/api/v1/openapi.json`: it
//! cannot drift from the routes it describes.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// An RFC 7807 problem document, as every error is answered.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ProblemDoc {
    /// Always `about:blank`.
    #[schema(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
}

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::session::COOKIE,
                "The session cookie that login (POST /api/v1/session) or setup sets.",
            ))),
        );
        components.add_security_scheme(
            "csrf",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-CSRF-Token",
                "The session's CSRF token, on every request that changes something.",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "dataward",
        description = "The HTTP API of dataward, the home gateway that decides what of your devices' data leaves your home. Everything the web pages do is here, as JSON; errors are RFC 7807 problem documents.",
    ),
    paths(
        crate::api::setup,
        crate::api::login,
        crate::api::session_info,
        crate::api::logout,
        crate::api::status,
        crate::api::statement,
        crate::api::ledger,
        crate::api::ledger_verify,
        crate::api::ledger_summary,
        crate::api::ledger_received,
        crate::api::fields,
        crate::api::fields_approve,
        crate::api::destinations,
        crate::sharing::api_devices,
        crate::sharing::api_add,
        crate::sharing::api_device,
        crate::sharing::api_remove,
        crate::sharing::api_grid,
        crate::sharing::api_save,
        crate::sharing::api_preview,
        crate::events::events,
        crate::data_page::api_export,
        crate::data_page::api_delete,
    ),
    components(schemas(ProblemDoc)),
    modifiers(&Security),
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /api/v1/openapi.json`: it describes routes, never data, so it
/// needs no session.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
