//! Port assignment (SPEC §5): `GRPC_PORT` is the lowest free port of the
//! range, `HEALTH_PORT` the manifest's preferred port when nobody holds it
//! and it can be bound, else the next free port of the range.
//!
//! Owns the set of held ports; probes the OS only with a short bind.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;

use crate::reconcile::observed::Ports;

/// The range has no free port left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free port left in {start}-{end}")]
pub struct Exhausted {
    /// First port of the range.
    pub start: u16,
    /// Last port of the range.
    pub end: u16,
}

/// Hands out ports and remembers which are held.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    held: BTreeSet<u16>,
    /// Every port of the range below this one is held: the search for the
    /// lowest free port starts here instead of walking all held ports.
    low: u32,
    bindable: fn(u16) -> bool,
}

/// True when a TCP listener can bind the port on every interface now.
pub fn os_bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

impl PortAllocator {
    /// An allocator over `range`, checking ports with `bindable`.
    pub fn new(range: RangeInclusive<u16>, bindable: fn(u16) -> bool) -> Self {
        PortAllocator {
            low: u32::from(*range.start()),
            range,
            held: BTreeSet::new(),
            bindable,
        }
    }

    fn lowest_free(&mut self) -> Result<u16, Exhausted> {
        let end = u32::from(*self.range.end());
        while self.low <= end && self.held.contains(&(self.low as u16)) {
            self.low += 1;
        }
        let from = u16::try_from(self.low).unwrap_or(u16::MAX);
        let mut above = self.held.range(from..).peekable();
        for p in self.low..=end {
            let p = p as u16;
            // The held ports come in order: skip them without a lookup each.
            while above.next_if(|h| **h < p).is_some() {}
            if above.peek() == Some(&&p) {
                continue;
            }
            if (self.bindable)(p) {
                return Ok(p);
            }
        }
        Err(Exhausted {
            start: *self.range.start(),
            end: *self.range.end(),
        })
    }

    /// Assigns the two ports of a new instance.
    pub fn assign(&mut self, preferred_health: Option<u16>) -> Result<Ports, Exhausted> {
        let grpc = self.lowest_free()?;
        self.held.insert(grpc);
        let health = match preferred_health {
            Some(p) if !self.held.contains(&p) && (self.bindable)(p) => p,
            _ => match self.lowest_free() {
                Ok(p) => p,
                Err(e) => {
                    self.free(grpc);
                    return Err(e);
                }
            },
        };
        self.held.insert(health);
        Ok(Ports { grpc, health })
    }

    /// Marks ports as held (an adopted instance).
    pub fn hold(&mut self, ports: Ports) {
        self.held.insert(ports.grpc);
        self.held.insert(ports.health);
    }

    /// Holds an adopted instance's ports unless one of them is held
    /// already; false then (and nothing is held).
    pub fn try_hold(&mut self, ports: Ports) -> bool {
        if ports.grpc == ports.health
            || self.held.contains(&ports.grpc)
            || self.held.contains(&ports.health)
        {
            return false;
        }
        self.hold(ports);
        true
    }

    /// Frees an instance's ports.
    pub fn release(&mut self, ports: Ports) {
        self.free(ports.grpc);
        self.free(ports.health);
    }

    fn free(&mut self, port: u16) {
        if self.held.remove(&port) && self.range.contains(&port) {
            self.low = self.low.min(u32::from(port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_free(_: u16) -> bool {
        true
    }

    fn odd_busy(p: u16) -> bool {
        p.is_multiple_of(2)
    }

    #[test]
    fn the_first_instance_gets_the_lowest_port_and_its_preferred_health_port() {
        let mut a = PortAllocator::new(50051..=50060, all_free);
        let p = a.assign(Some(9090)).unwrap();
        assert_eq!(
            p,
            Ports {
                grpc: 50051,
                health: 9090
            }
        );
        let q = a.assign(Some(9090)).unwrap();
        assert_eq!(
            q,
            Ports {
                grpc: 50052,
                health: 50053
            }
        );
        a.release(p);
        let r = a.assign(Some(9090)).unwrap();
        assert_eq!(
            r,
            Ports {
                grpc: 50051,
                health: 9090
            }
        );
    }

    #[test]
    fn ports_that_cannot_be_bound_are_skipped() {
        let mut a = PortAllocator::new(51..=60, odd_busy);
        assert_eq!(
            a.assign(Some(9091)).unwrap(),
            Ports {
                grpc: 52,
                health: 54
            }
        );
    }

    #[test]
    fn the_lowest_free_port_is_found_among_many_held_and_released() {
        let mut a = PortAllocator::new(1000..=1999, all_free);
        let all: Vec<Ports> = (0..500).map(|_| a.assign(None).unwrap()).collect();
        assert_eq!(
            all[499],
            Ports {
                grpc: 1998,
                health: 1999
            }
        );
        a.release(all[100]);
        a.release(all[7]);
        assert_eq!(
            a.assign(None).unwrap(),
            Ports {
                grpc: 1014,
                health: 1015
            }
        );
        assert_eq!(
            a.assign(None).unwrap(),
            Ports {
                grpc: 1200,
                health: 1201
            }
        );
        assert!(a.assign(None).is_err());
        // Ports held from outside (adopted) are skipped too.
        let mut b = PortAllocator::new(1..=10, all_free);
        b.hold(Ports { grpc: 1, health: 3 });
        assert_eq!(b.assign(None).unwrap(), Ports { grpc: 2, health: 4 });
        // Two adopted processes never share a port.
        assert!(!b.try_hold(Ports { grpc: 5, health: 4 }));
        assert!(!b.try_hold(Ports { grpc: 6, health: 6 }));
        assert!(b.try_hold(Ports { grpc: 5, health: 6 }));
        assert_eq!(b.assign(None).unwrap(), Ports { grpc: 7, health: 8 });
    }

    #[test]
    fn an_exhausted_range_is_an_error_and_holds_nothing() {
        let mut a = PortAllocator::new(10..=10, all_free);
        assert!(a.assign(None).is_err());
        assert_eq!(
            a.assign(Some(99)).unwrap(),
            Ports {
                grpc: 10,
                health: 99
            }
        );
    }
}
