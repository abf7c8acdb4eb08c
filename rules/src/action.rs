//! What a rule asks the hub to do: `RuleSet::evaluate` turns an `Event` into these, and the hub's
//! `actions::dispatch` carries them out with one exhaustive match (the same layer the API and UI use).

use serde::{Deserialize, Serialize};

/// A site by its external id within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SiteRef {
    pub tenant: String,
    pub site: String,
}

/// How bad an alarm is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Major,
    Minor,
    Warning,
}

/// The mode of a site's IVR (voice menu).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IvrMode {
    Day,
    Night,
    Emergency,
}

/// One thing a rule asks for. A closed enum: the hub dispatches it with an exhaustive match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    RaiseAlarm {
        key: String,
        severity: Severity,
        message: String,
        tenant: Option<String>,
        sensor: Option<String>,
        site: Option<SiteRef>,
        supply_point: Option<String>,
    },
    ClearAlarm {
        key: String,
        reason: Option<String>,
    },
    /// The body of `POST /api/v1/outages`, validated by the hub.
    RecordOutage(serde_json::Value),
    CloseOutage {
        tenant: String,
        external_id: String,
    },
    SetIvrMode {
        sites: Vec<SiteRef>,
        mode: IvrMode,
        announcement: Option<String>,
    },
    /// Back to the schedule (business hours).
    RevertIvrMode {
        sites: Vec<SiteRef>,
    },
    /// A campaign body (name, tenant, audience, template, channels, schedule), validated by the hub.
    LaunchCampaign(serde_json::Value),
    /// A ticket body (tenant, site, category, description, priority), validated by the hub.
    CreateTicket(serde_json::Value),
    NotifyStaff {
        tenant: Option<String>,
        /// An on-duty group or role, e.g. `on_duty_engineer`.
        to: String,
        message: String,
    },
    /// A Modbus write to the register mapped to that sensor.
    WriteRegister {
        sensor: String,
        value: f64,
    },
}

impl Action {
    /// The snake_case name of the variant, as in the `action` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Action::RaiseAlarm { .. } => "raise_alarm",
            Action::ClearAlarm { .. } => "clear_alarm",
            Action::RecordOutage(_) => "record_outage",
            Action::CloseOutage { .. } => "close_outage",
            Action::SetIvrMode { .. } => "set_ivr_mode",
            Action::RevertIvrMode { .. } => "revert_ivr_mode",
            Action::LaunchCampaign(_) => "launch_campaign",
            Action::CreateTicket(_) => "create_ticket",
            Action::NotifyStaff { .. } => "notify_staff",
            Action::WriteRegister { .. } => "write_register",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_with_the_action_name_and_round_trips() {
        let actions = vec![
            Action::RaiseAlarm {
                key: "pressure:hp-3".into(),
                severity: Severity::Critical,
                message: "low".into(),
                tenant: Some("t1".into()),
                sensor: None,
                site: Some(SiteRef {
                    tenant: "t1".into(),
                    site: "c1".into(),
                }),
                supply_point: Some("hp-3".into()),
            },
            Action::LaunchCampaign(serde_json::json!({"name": "x", "audience": {"outage": 12}})),
            Action::SetIvrMode {
                sites: vec![],
                mode: IvrMode::Emergency,
                announcement: None,
            },
        ];
        for a in actions {
            let json = serde_json::to_value(&a).unwrap();
            assert_eq!(json["action"], a.name());
            let back: Action = serde_json::from_value(json).unwrap();
            assert_eq!(back, a);
        }
        let json =
            serde_json::to_value(Action::LaunchCampaign(serde_json::json!({"name": "x"}))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"action": "launch_campaign", "name": "x"})
        );
    }
}
