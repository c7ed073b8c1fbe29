//! Outlier detection's bookkeeping, pure: consecutive errors per endpoint, ejections with
//! Envoy's rules (the ejection lasts `base * times ejected`; at most `max_ejection_percent` of
//! the endpoints are out at once, but one always may be). The plugin keeps one [`Ledger`] per
//! cluster in shared data, so every worker counts into the same one.

use wasmesh_policy::OutlierDetection;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub address: String,
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub times_ejected: u32,
    pub ejected_until_ms: u64,
}

/// The endpoints of one cluster that have a record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub entries: Vec<Entry>,
}

/// An ejection to carry out.
#[derive(Debug, PartialEq, Eq)]
pub struct Ejection {
    pub address: String,
    pub duration_ms: u64,
}

impl Ledger {
    /// One line per endpoint: `address c5xx cgateway times until_ms`.
    pub fn parse(text: &str) -> Ledger {
        let entries = text
            .lines()
            .filter_map(|line| {
                let mut f = line.split(' ');
                Some(Entry {
                    address: f.next()?.to_owned(),
                    consecutive_5xx: f.next()?.parse().ok()?,
                    consecutive_gateway: f.next()?.parse().ok()?,
                    times_ejected: f.next()?.parse().ok()?,
                    ejected_until_ms: f.next()?.parse().ok()?,
                })
            })
            .collect();
        Ledger { entries }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            out.push_str(&format!(
                "{} {} {} {} {}\n",
                e.address,
                e.consecutive_5xx,
                e.consecutive_gateway,
                e.times_ejected,
                e.ejected_until_ms
            ));
        }
        out
    }

    /// Records one upstream answer (`status` 0: none came — connect failure, reset or
    /// timeout, which count as gateway errors). Returns whether the ledger changed, and an
    /// ejection if this answer tipped the endpoint over.
    pub fn record(
        &mut self,
        policy: &OutlierDetection,
        address: &str,
        status: u16,
        now_ms: u64,
    ) -> (bool, Option<Ejection>) {
        let is_5xx = status == 0 || status >= 500;
        let is_gateway = matches!(status, 0 | 502..=504);
        let index = match self.entries.iter().position(|e| e.address == address) {
            Some(i) => i,
            None if !is_5xx => return (false, None),
            None => {
                self.entries.push(Entry {
                    address: address.to_owned(),
                    ..Entry::default()
                });
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[index];
        if !is_5xx {
            let changed = entry.consecutive_5xx != 0 || entry.consecutive_gateway != 0;
            entry.consecutive_5xx = 0;
            entry.consecutive_gateway = 0;
            return (changed, None);
        }
        if entry.ejected_until_ms > now_ms {
            // Answers still in flight from before the ejection do not extend it.
            return (false, None);
        }
        entry.consecutive_5xx += 1;
        if is_gateway {
            entry.consecutive_gateway += 1;
        } else {
            entry.consecutive_gateway = 0;
        }
        let tripped = (policy.consecutive_5xx > 0
            && entry.consecutive_5xx >= policy.consecutive_5xx)
            || (policy.consecutive_gateway_errors > 0
                && entry.consecutive_gateway >= policy.consecutive_gateway_errors);
        if !tripped {
            return (true, None);
        }
        let ejected = self
            .entries
            .iter()
            .filter(|e| e.ejected_until_ms > now_ms)
            .count() as u64;
        let endpoints = u64::from(policy.endpoints.max(1));
        let allowed = ejected == 0
            || (ejected + 1) * 100 <= u64::from(policy.max_ejection_percent) * endpoints;
        let entry = &mut self.entries[index];
        entry.consecutive_5xx = 0;
        entry.consecutive_gateway = 0;
        if !allowed {
            return (true, None);
        }
        entry.times_ejected += 1;
        let duration_ms = policy.base_ejection_ms * u64::from(entry.times_ejected);
        entry.ejected_until_ms = now_ms + duration_ms;
        (
            true,
            Some(Ejection {
                address: address.to_owned(),
                duration_ms,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 0,
            interval_ms: 1000,
            base_ejection_ms: 30_000,
            max_ejection_percent: 50,
            endpoints: 3,
        }
    }

    #[test]
    fn consecutive_errors_eject_and_a_success_resets_the_count() {
        let p = policy();
        let mut l = Ledger::default();
        assert_eq!(
            l.record(&p, "a", 200, 0),
            (false, None),
            "healthy answers write nothing"
        );
        l.record(&p, "a", 500, 0);
        l.record(&p, "a", 500, 0);
        assert_eq!(l.record(&p, "a", 200, 0), (true, None));
        l.record(&p, "a", 500, 0);
        l.record(&p, "a", 503, 0);
        let (_, ejection) = l.record(&p, "a", 0, 10);
        assert_eq!(
            ejection,
            Some(Ejection {
                address: "a".into(),
                duration_ms: 30_000
            })
        );
        assert_eq!(Ledger::parse(&l.render()), l);
    }

    #[test]
    fn the_second_ejection_lasts_twice_as_long() {
        let p = policy();
        let mut l = Ledger::default();
        for _ in 0..3 {
            l.record(&p, "a", 500, 0);
        }
        for _ in 0..2 {
            assert_eq!(l.record(&p, "a", 500, 100).1, None);
        }
        let mut last = None;
        for _ in 0..3 {
            last = l.record(&p, "a", 500, 40_000).1;
        }
        assert_eq!(last.unwrap().duration_ms, 60_000);
    }

    #[test]
    fn max_ejection_percent_holds_but_one_may_always_go() {
        let mut p = policy();
        p.max_ejection_percent = 10;
        let mut l = Ledger::default();
        for _ in 0..3 {
            l.record(&p, "a", 500, 0);
        }
        assert!(
            l.entries[0].ejected_until_ms > 0,
            "one host may always be ejected"
        );
        let mut last = None;
        for _ in 0..3 {
            last = l.record(&p, "b", 500, 0).1;
        }
        assert_eq!(last, None, "a second would exceed 10% of 3");
    }

    #[test]
    fn gateway_errors_count_only_502_to_504_and_no_answer() {
        let mut p = policy();
        p.consecutive_5xx = 0;
        p.consecutive_gateway_errors = 2;
        let mut l = Ledger::default();
        l.record(&p, "a", 500, 0);
        l.record(&p, "a", 500, 0);
        assert!(l.entries[0].ejected_until_ms == 0);
        l.record(&p, "a", 502, 0);
        assert!(l.record(&p, "a", 0, 0).1.is_some());
    }
}
