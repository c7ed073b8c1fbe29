//! Fault injection: Istio's `fault.delay` and `fault.abort` for the route the router chose.
//! A delay holds the request in the proxy (flag `DI`, no worker blocked); an abort answers it
//! here (flag `FI`), with an HTTP status or, for gRPC, a `grpc-status`. When both fire, the
//! abort is answered after the delay, as Envoy's fault filter does.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use wasmesh_policy::{Dice, FaultConfig, ROUTE_PROPERTY};
use wasmesh_sdk::{Action, Config, FilterResult, HttpFilter, Plugin, Request, mesh, property_str};

#[derive(Default)]
struct Faults {
    config: Rc<FaultConfig>,
    dice: Option<Rc<RefCell<Dice>>>,
}

impl Plugin for Faults {
    fn configure(&mut self, config: &Config) -> Result<(), Box<dyn std::error::Error>> {
        let config: FaultConfig = config.json()?;
        for (route, fault) in &config.routes {
            if let Some(abort) = &fault.abort
                && abort.grpc_status.is_none()
                && !abort.http_status.is_some_and(|s| (200..600).contains(&s))
            {
                return Err(format!(
                    "route {route}: abort needs an http_status in 200..599 or a grpc_status"
                )
                .into());
            }
        }
        self.config = Rc::new(config);
        self.dice
            .get_or_insert_with(|| Rc::new(RefCell::new(Dice::seeded())));
        Ok(())
    }

    fn new_http(&mut self) -> Box<dyn HttpFilter> {
        Box::new(Inject {
            config: self.config.clone(),
            dice: self.dice.clone(),
        })
    }
}

struct Inject {
    config: Rc<FaultConfig>,
    dice: Option<Rc<RefCell<Dice>>>,
}

impl HttpFilter for Inject {
    fn on_request_headers(&mut self, req: &mut Request, _end: bool) -> FilterResult {
        if self.config.routes.is_empty() {
            return Ok(Action::Continue);
        }
        let (Some(route), Some(dice)) = (property_str(&ROUTE_PROPERTY)?, &self.dice) else {
            return Ok(Action::Continue);
        };
        let Some(fault) = self.config.routes.get(&route) else {
            return Ok(Action::Continue);
        };
        let mut dice = dice.borrow_mut();
        if let Some(delay) = &fault.delay
            && dice.percent(delay.percentage)
        {
            mesh::delay(Duration::from_millis(delay.fixed_delay_ms))?;
        }
        if let Some(abort) = &fault.abort
            && dice.percent(abort.percentage)
        {
            mesh::response_flag("FI")?;
            match abort.grpc_status {
                Some(code) => req.respond_grpc(code, "fault filter abort")?,
                None => req.respond(
                    abort.http_status.unwrap_or(503),
                    &[("content-type", "text/plain")],
                    b"fault filter abort",
                )?,
            }
        }
        Ok(Action::Continue)
    }
}

wasmesh_sdk::plugin!(Faults::default());
