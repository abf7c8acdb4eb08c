//! `/connectors`: the state of every running connector (connected, counts of what arrived, was
//! accepted and was rejected and why, per topic or register), so junk on MQTT or Modbus is visible.

use axum::Json;
use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, AppState, CurrentUser};
use crate::auth::Permission;
use crate::ingest::ConnectorsReport;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Every connector with its counters; `rejects` maps a topic (MQTT), register (Modbus) or sensor id
/// (unknown to the hub) to the reasons and their counts. Connectors serve all tenants, so a user bound
/// to one tenant may not read this.
#[utoipa::path(get, path = "/connectors", tag = "connectors", responses((status = 200, body = ConnectorsReport)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
) -> Result<Json<ConnectorsReport>, ApiError> {
    user.require(Permission::Read)?;
    if user.0.tenant_id.is_some() {
        return Err(ApiError::Forbidden(Permission::Administer));
    }
    Ok(Json(s.connectors.report()))
}

/// The connectors' counters in the Prometheus text format, appended to `/metrics`.
pub fn prometheus(report: &ConnectorsReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "# TYPE hub_ingest_queue_depth gauge");
    let _ = writeln!(out, "hub_ingest_queue_depth {}", report.queue_depth);
    for c in &report.connectors {
        let id = c.id.replace('\\', "\\\\").replace('"', "\\\"");
        let labels = format!("connector=\"{id}\",kind=\"{}\"", c.kind);
        let _ = writeln!(
            out,
            "hub_connector_connected{{{labels}}} {}",
            u8::from(c.connected)
        );
        for (name, value) in [
            ("received", c.received),
            ("accepted", c.accepted),
            ("rejected", c.rejected),
            ("reconnects", c.reconnects),
        ] {
            let _ = writeln!(out, "hub_connector_{name}_total{{{labels}}} {value}");
        }
        let _ = writeln!(
            out,
            "hub_connector_queue_depth{{{labels}}} {}",
            c.queue_depth
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_series() {
        let stats = connectors::ConnectorStats::new("plant \"a\"", "mqtt");
        stats.received(3);
        stats.reject("t", "junk");
        let report = ConnectorsReport {
            mqtt_broker: None,
            queue_depth: 2,
            connectors: vec![stats.snapshot()],
        };
        let text = prometheus(&report);
        assert!(text.contains("hub_ingest_queue_depth 2"), "{text}");
        assert!(
            text.contains(r#"hub_connector_received_total{connector="plant \"a\"",kind="mqtt"} 3"#),
            "{text}"
        );
        assert!(
            text.contains("hub_connector_rejected_total{") && text.contains("} 1\n"),
            "{text}"
        );
    }
}
