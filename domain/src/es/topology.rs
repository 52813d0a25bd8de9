//! The topology of a system (sourced's `Sourced.topology`): commands → events → reactions →
//! read models, **declared in code** (sourced parses the Ruby source with Prism, which a Rust
//! port cannot do), exported as JSON or as a Mermaid flowchart.
//!
//! Node kinds and ids follow sourced: a command node's id is its type and it lists the events
//! it produces; event nodes are deduplicated (the first declaring group owns them); an
//! automation's id is `<first consumed type>-<group>-aut`; a read model's id is
//! `<group>-rm`.

use serde::{Deserialize, Serialize};

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A command, decided by an actor.
    Command,
    /// An event.
    Event,
    /// A reaction: consumes messages, produces commands (or other messages).
    Automation,
    /// A read model kept by a projector.
    ReadModel,
}

/// One node of the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The kind (`type` in JSON, as sourced).
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// The id (see the module docs).
    pub id: String,
    /// A readable name.
    pub name: String,
    /// The group (actor, reactor or projector) it belongs to.
    pub group_id: String,
    /// What it consumes (automations and read models).
    pub consumes: Vec<String>,
    /// What it produces.
    pub produces: Vec<String>,
}

/// A declared topology. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Topology {
    /// The nodes, in declaration order.
    pub nodes: Vec<Node>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    fn event(&mut self, group: &str, kind: &str) {
        if !self
            .nodes
            .iter()
            .any(|n| n.kind == NodeKind::Event && n.id == kind)
        {
            self.nodes.push(Node {
                kind: NodeKind::Event,
                id: kind.to_owned(),
                name: kind.to_owned(),
                group_id: group.to_owned(),
                consumes: Vec::new(),
                produces: Vec::new(),
            });
        }
    }

    /// Declares that `group` decides `command` into `events`.
    #[must_use]
    pub fn command(mut self, group: &str, command: &str, events: &[&str]) -> Self {
        self.nodes.push(Node {
            kind: NodeKind::Command,
            id: command.to_owned(),
            name: command.to_owned(),
            group_id: group.to_owned(),
            consumes: Vec::new(),
            produces: events.iter().map(|e| (*e).to_owned()).collect(),
        });
        for e in events {
            self.event(group, e);
        }
        self
    }

    /// Declares that `group` reacts to `consumes` by producing `produces`.
    #[must_use]
    pub fn automation(mut self, group: &str, consumes: &[&str], produces: &[&str]) -> Self {
        let first = consumes.first().copied().unwrap_or("any");
        self.nodes.push(Node {
            kind: NodeKind::Automation,
            id: format!("{first}-{group}-aut"),
            name: format!("reaction({})", consumes.join(", ")),
            group_id: group.to_owned(),
            consumes: consumes.iter().map(|c| (*c).to_owned()).collect(),
            produces: produces.iter().map(|p| (*p).to_owned()).collect(),
        });
        self
    }

    /// Declares that projector `group` keeps a read model from `consumes`.
    #[must_use]
    pub fn read_model(mut self, group: &str, consumes: &[&str]) -> Self {
        self.nodes.push(Node {
            kind: NodeKind::ReadModel,
            id: format!("{group}-rm"),
            name: group.to_owned(),
            group_id: group.to_owned(),
            consumes: consumes.iter().map(|c| (*c).to_owned()).collect(),
            produces: Vec::new(),
        });
        self
    }

    /// The nodes of `kind`.
    pub fn of(&self, kind: NodeKind) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.kind == kind)
    }

    /// A Mermaid flowchart: commands as rectangles, events as rounded boxes, automations as
    /// hexagons, read models as cylinders; edges from what is consumed to what is produced.
    pub fn to_mermaid(&self) -> String {
        let key = |id: &str| -> String {
            id.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect()
        };
        let mut out = String::from("flowchart LR\n");
        for n in &self.nodes {
            let k = key(&format!("{:?}_{}", n.kind, n.id));
            let shape = match n.kind {
                NodeKind::Command => format!("{k}[\"{}\"]", n.name),
                NodeKind::Event => format!("{k}(\"{}\")", n.name),
                NodeKind::Automation => format!("{k}{{{{\"{}: {}\"}}}}", n.group_id, n.name),
                NodeKind::ReadModel => format!("{k}[(\"{}\")]", n.name),
            };
            out.push_str(&format!("  {shape}\n"));
        }
        // Commands and events by type (a produced type is an event if declared as one, else
        // a command).
        let node_of = |kind: NodeKind, id: &str| key(&format!("{kind:?}_{id}"));
        let target = |t: &str| {
            if self.of(NodeKind::Event).any(|n| n.id == t) {
                Some(node_of(NodeKind::Event, t))
            } else if self.of(NodeKind::Command).any(|n| n.id == t) {
                Some(node_of(NodeKind::Command, t))
            } else {
                None
            }
        };
        for n in &self.nodes {
            let me = node_of(n.kind, &n.id);
            for c in &n.consumes {
                if let Some(src) = target(c) {
                    out.push_str(&format!("  {src} --> {me}\n"));
                }
            }
            for p in &n.produces {
                if let Some(dst) = target(p) {
                    out.push_str(&format!("  {me} --> {dst}\n"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_declared_deduplicated_and_exported() {
        let t = Topology::new()
            .command("Cart", "cart.add", &["cart.added"])
            .command("Cart", "cart.clear", &["cart.cleared", "cart.added"])
            .automation("Mailer", &["cart.added"], &["mail.send"])
            .read_model("carts", &["cart.added", "cart.cleared"]);
        assert_eq!(t.of(NodeKind::Event).count(), 2, "events deduplicated");
        assert_eq!(t.of(NodeKind::Command).count(), 2);
        let aut = t.of(NodeKind::Automation).next().map(|n| n.id.clone());
        assert_eq!(aut.as_deref(), Some("cart.added-Mailer-aut"));
        let json = serde_json::to_value(&t).unwrap_or_default();
        assert_eq!(json["nodes"][0]["type"], "command");
        let m = t.to_mermaid();
        assert!(m.starts_with("flowchart LR\n"));
        assert!(m.contains("Command_cart_add --> Event_cart_added"), "{m}");
        assert!(m.contains("Event_cart_added --> ReadModel_carts_rm"), "{m}");
        assert!(
            m.contains("Event_cart_added --> Automation_cart_added_Mailer_aut"),
            "{m}"
        );
    }
}
