//! Voice for campaigns: the dispatcher's [`Dialer`] over the telephony core's outbound calls
//! (`Telephony::originate`). The message is spoken in the contact's language and repeated; pressing 1
//! confirms. The call's outcome maps onto the campaign's state machine: Confirmed -> confirmed,
//! Answered -> answered, AnsweringMachine / NoAnswer / Busy -> retried per the campaign's policy.

use std::time::Duration;

use connectors::channels::BoxFuture;

use super::dispatch::Dialer;
use super::policy::SendOutcome;
use crate::config::Config;
use crate::telephony::outbound::{OutboundCall, Outcome, Playback};
use crate::telephony::{Telephony, TelephonyError};

/// How long a campaign call waits for a free trunk line before it counts as a failed attempt (the
/// dispatcher keeps at most as many calls in flight as there are lines, so this is rarely used).
const LINE_WAIT: Duration = Duration::from_secs(60);

/// Campaign calls through the hub's telephony core.
pub struct TelephonyDialer {
    phone: Telephony,
    lines: usize,
}

impl TelephonyDialer {
    /// Lines: every configured trunk's `lines` together (calls at once without trunks otherwise).
    pub fn new(phone: Telephony, config: &Config) -> Self {
        let lines: usize = config.telephony.trunks.values().map(|t| t.lines).sum();
        let lines = if lines == 0 {
            config.telephony.max_calls
        } else {
            lines
        };
        Self {
            phone,
            lines: lines.max(1),
        }
    }
}

/// The campaign's view of a call's end.
pub fn outcome_of(result: Result<Outcome, TelephonyError>) -> SendOutcome {
    match result {
        Ok(Outcome::Confirmed { .. }) => SendOutcome::Confirmed,
        Ok(Outcome::Answered) => SendOutcome::Answered,
        Ok(Outcome::AnsweringMachine) => SendOutcome::AnsweringMachine,
        Ok(Outcome::Busy) => SendOutcome::Busy,
        Ok(Outcome::NoAnswer) => SendOutcome::NoAnswer,
        // 404, 484 and 604: the number does not exist; other refusals may pass later.
        Ok(Outcome::Rejected { code }) => SendOutcome::Failed {
            reason: format!("call rejected with {code}"),
            permanent: matches!(code, 404 | 484 | 604),
        },
        Ok(Outcome::Failed { reason }) => SendOutcome::Failed {
            reason,
            permanent: false,
        },
        Err(e @ TelephonyError::Invalid { .. }) | Err(e @ TelephonyError::Config { .. }) => {
            SendOutcome::Failed {
                reason: e.to_string(),
                permanent: true,
            }
        }
        Err(e) => SendOutcome::Failed {
            reason: e.to_string(),
            permanent: false,
        },
    }
}

impl Dialer for TelephonyDialer {
    fn call<'a>(
        &'a self,
        to: &'a str,
        text: &'a str,
        language: &'a str,
    ) -> BoxFuture<'a, SendOutcome> {
        Box::pin(async move {
            let mut call = OutboundCall::new(to, "campaign", Playback::Text(text.to_owned()));
            call.language = if language == "en" { "en" } else { "ru" }.to_owned();
            call.confirm_digits = "1".into();
            call.line_wait = LINE_WAIT;
            outcome_of(self.phone.originate(call).await.map(|r| r.outcome))
        })
    }

    fn lines(&self) -> usize {
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_outcomes_map_onto_the_state_machine() {
        assert_eq!(
            outcome_of(Ok(Outcome::Confirmed { digit: '1' })),
            SendOutcome::Confirmed
        );
        assert_eq!(outcome_of(Ok(Outcome::Answered)), SendOutcome::Answered);
        assert_eq!(
            outcome_of(Ok(Outcome::AnsweringMachine)),
            SendOutcome::AnsweringMachine
        );
        assert_eq!(outcome_of(Ok(Outcome::Busy)), SendOutcome::Busy);
        assert_eq!(outcome_of(Ok(Outcome::NoAnswer)), SendOutcome::NoAnswer);
        assert!(matches!(
            outcome_of(Ok(Outcome::Rejected { code: 404 })),
            SendOutcome::Failed {
                permanent: true,
                ..
            }
        ));
        assert!(matches!(
            outcome_of(Err(TelephonyError::LinesBusy {
                trunk: "t".into(),
                lines: 2
            })),
            SendOutcome::Failed {
                permanent: false,
                ..
            }
        ));
        assert!(matches!(
            outcome_of(Err(TelephonyError::Invalid {
                field: "to",
                reason: "no trunk".into()
            })),
            SendOutcome::Failed {
                permanent: true,
                ..
            }
        ));
    }
}
