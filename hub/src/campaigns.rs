//! Launching a campaign (from a rule, the API or the UI): the audience (consumers fed by a supply
//! point, affected by an outage, or living at sites) is resolved through the supply network into one
//! contact per consumer, life-support residents and social objects first, persisted with an audit
//! entry. Delivery by channel (SMS, voice, email, messenger) is the campaigns issue's dispatcher.

use serde::Deserialize;

use crate::api::AppState;
use crate::storage::campaigns::{self, Campaign, NewContact};
use crate::storage::refs::Refs;
use crate::storage::{StorageError, audit, outages};
use crate::types::ExternalId;

/// The body of `POST /api/v1/campaigns` and of a rule's `launch_campaign`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    pub name: String,
    pub tenant: ExternalId,
    pub audience: Audience,
    /// Template name per channel (`heat_emergency`).
    #[serde(default)]
    pub template: String,
    /// Channels in the campaign's default order: `voice`, `sms`, `email`, `messenger`.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// Who is to be told: exactly one of the keys.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// Consumers fed by this supply point (and everything downstream of it).
    #[serde(default)]
    pub supply_point: Option<ExternalId>,
    /// Consumers affected by this outage (by the hub's id).
    #[serde(default)]
    pub outage: Option<i64>,
    /// Consumers living at these sites (with all their sub-sites).
    #[serde(default)]
    pub sites: Vec<ExternalId>,
}

pub async fn launch(
    state: &AppState,
    actor: &str,
    tenant_scope: Option<i64>,
    req: &CampaignRequest,
) -> Result<Campaign, StorageError> {
    if req.name.trim().is_empty() {
        return Err(StorageError::invalid("name", "must not be empty"));
    }
    let a = &req.audience;
    let given = usize::from(a.supply_point.is_some())
        + usize::from(a.outage.is_some())
        + usize::from(!a.sites.is_empty());
    if given != 1 {
        return Err(StorageError::invalid(
            "audience",
            "exactly one of supply_point, outage or sites",
        ));
    }
    let index = state.network.get(&state.db).await?;
    let mut tx = state.db.pool.begin().await?;
    let mut refs = Refs::scoped(tenant_scope);
    let tenant_id = refs.tenant(&mut tx, req.tenant.as_str()).await?;
    let affected = if let Some(p) = &a.supply_point {
        let id = refs
            .supply_point(&mut tx, "audience.supply_point", tenant_id, p.as_str())
            .await?;
        index.affected(id)
    } else if let Some(o) = a.outage {
        let outage = outages::get(&mut tx, o).await?;
        if outage.tenant_id != tenant_id {
            return Err(StorageError::invalid(
                "audience.outage",
                "belongs to another tenant",
            ));
        }
        crate::api::outages::affected_by(&index, &outage)
    } else {
        let mut ids = Vec::with_capacity(a.sites.len());
        for s in &a.sites {
            ids.push(
                refs.site(&mut tx, "audience.sites", tenant_id, s.as_str())
                    .await?,
            );
        }
        index.affected_sites(&ids)
    };
    let first: std::collections::HashSet<i64> = affected
        .life_support
        .iter()
        .chain(&affected.social_objects)
        .copied()
        .collect();
    let mut consumers = affected.consumers.clone();
    consumers.sort_unstable();
    consumers.dedup();
    let mut contacts: Vec<NewContact> = consumers
        .iter()
        .map(|c| (*c, i64::from(!first.contains(c))))
        .collect();
    // Inserted in calling order, so that the contacts' ids are that order (and keyset paging keeps it).
    contacts.sort_by_key(|(consumer, priority)| (*priority, *consumer));
    let audience = serde_json::to_value(a).unwrap_or_default();
    let campaign = campaigns::create(
        &mut tx,
        tenant_id,
        req.name.trim(),
        &req.template,
        &req.channels,
        &audience,
        actor,
        &contacts,
    )
    .await?;
    audit::record(
        &mut tx,
        actor,
        "create",
        "campaign",
        &campaign.id.to_string(),
        serde_json::json!({"name": campaign.name, "audience": audience, "contacts": contacts.len(),
            "first": first.len()}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(campaign = campaign.id, contacts = contacts.len(), %actor, "campaign created");
    Ok(campaign)
}
