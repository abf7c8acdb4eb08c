//! The built-in telephony core (SIP and RTP): answers residents, runs IVR menus, places outbound calls.
//! Work in progress (issue 6).

use serde::{Deserialize, Serialize};

/// `[telephony]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelephonyConfig {}
