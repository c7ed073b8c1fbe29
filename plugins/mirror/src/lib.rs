//! Traffic mirroring: Istio's `mirror` / `mirrors` with their percentages, for the route the
//! router chose. The core sends the copy with the Host suffixed `-shadow`, discards its
//! answer, and never lets it delay or fail the request.

use std::cell::RefCell;
use std::rc::Rc;

use wasmesh_policy::{Dice, MirrorConfig, ROUTE_PROPERTY};
use wasmesh_sdk::{Action, Config, FilterResult, HttpFilter, Plugin, Request, mesh, property_str};

#[derive(Default)]
struct Mirrors {
    config: Rc<MirrorConfig>,
    dice: Option<Rc<RefCell<Dice>>>,
}

impl Plugin for Mirrors {
    fn configure(&mut self, config: &Config) -> Result<(), Box<dyn std::error::Error>> {
        self.config = Rc::new(config.json()?);
        self.dice
            .get_or_insert_with(|| Rc::new(RefCell::new(Dice::seeded())));
        Ok(())
    }

    fn new_http(&mut self) -> Box<dyn HttpFilter> {
        Box::new(Shadow {
            config: self.config.clone(),
            dice: self.dice.clone(),
        })
    }
}

struct Shadow {
    config: Rc<MirrorConfig>,
    dice: Option<Rc<RefCell<Dice>>>,
}

impl HttpFilter for Shadow {
    fn on_request_headers(&mut self, _req: &mut Request, _end: bool) -> FilterResult {
        if self.config.routes.is_empty() {
            return Ok(Action::Continue);
        }
        let (Some(route), Some(dice)) = (property_str(&ROUTE_PROPERTY)?, &self.dice) else {
            return Ok(Action::Continue);
        };
        for mirror in self.config.routes.get(&route).into_iter().flatten() {
            if dice.borrow_mut().percent(mirror.percentage) {
                mesh::mirror(&mirror.cluster)?;
            }
        }
        Ok(Action::Continue)
    }
}

wasmesh_sdk::plugin!(Mirrors::default());
