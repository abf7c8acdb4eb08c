//! `POST /import/{kind}`: the same import as `hub import KIND FILE`, for the UI and scripts.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiQuery, AppState, CurrentUser};
use crate::auth::Permission;
use crate::import::{self, Format, ImportKind, ImportOptions, ImportReport};

/// Largest file accepted over HTTP (the CLI has no limit).
pub const MAX_IMPORT_BODY: usize = 64 << 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(run))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_IMPORT_BODY))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Import the valid rows and report the others (by default one bad row changes nothing).
    #[serde(default)]
    pub skip_invalid: bool,
}

/// Imports a CSV (`Content-Type: text/csv`) or JSON file of `sites`, `network`, `consumers` or `sensors`.
/// A file with a bad row changes nothing and answers 422 listing every bad row, unless `skip_invalid`.
#[utoipa::path(post, path = "/import/{kind}", tag = "import", params(ImportQuery),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = ImportReport), (status = 422, body = super::Problem)))]
async fn run(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(kind): Path<String>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ImportReport>, ApiError> {
    let kind: ImportKind = kind
        .parse()
        .map_err(|e: String| ApiError::field("kind", e))?;
    // Outage records are dispatchers' work; the model (sites, network, consumers, sensors) engineers'.
    user.require(if kind == ImportKind::Outages {
        Permission::ManageOutages
    } else {
        Permission::ManageModel
    })?;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = if content_type.contains("json") {
        Format::Json
    } else {
        Format::Csv
    };
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the file is not UTF-8".into()))?;
    let opts = ImportOptions {
        skip_invalid: q.skip_invalid,
        actor: user.name().to_owned(),
        tenant_scope: user.0.tenant_id,
    };
    let report = import::run(&s.db, kind, format, "upload", text, &opts).await?;
    for (outage, change) in &report.outages {
        crate::actions::announce_outage(&s, "import", outage, *change).await?;
    }
    if !report.errors.is_empty() && !q.skip_invalid {
        return Err(ApiError::Invalid(
            report
                .errors
                .iter()
                .map(|e| super::FieldError {
                    field: format!("line {}: {}", e.line, e.field),
                    reason: e.reason.clone(),
                })
                .collect(),
        ));
    }
    Ok(Json(report))
}
