//! The maps a compile gives each node, as [`NodeMaps`]: what `palisade
//! explain --source` and the tests check the semantic verdict against.

use std::collections::{BTreeMap, BTreeSet};

use super::NodeMaps;
use crate::{
    model::{Model, Node, ObjectRef},
    policy::{Budgets, Compiler, DesiredState, Profile, sim::MapView},
};

/// One compiled [`DesiredState`] per node.
#[derive(Debug, Default)]
pub struct CompiledNodes {
    pub states: BTreeMap<String, DesiredState>,
}

impl CompiledNodes {
    /// Compiles every node that holds a pod; `nodes` give the addresses of
    /// those that are known (the others get none).
    pub fn compile(model: &Model, profile: &Profile, nodes: &[Node], budgets: Budgets) -> Self {
        let names: BTreeSet<&str> = model
            .pods
            .values()
            .map(|p| p.node.as_str())
            .chain(nodes.iter().map(|n| n.name.as_str()))
            .collect();
        let states = names
            .into_iter()
            .map(|name| {
                let node = nodes
                    .iter()
                    .find(|n| n.name == name)
                    .cloned()
                    .unwrap_or_else(|| Node {
                        name: name.to_string(),
                        ..Node::default()
                    });
                let state = Compiler::default()
                    .with_budgets(budgets)
                    .compile(model, &node, profile);
                (name.to_string(), state)
            })
            .collect();
        Self { states }
    }
}

impl NodeMaps for CompiledNodes {
    fn maps(&self, node: &str) -> Option<&dyn MapView> {
        self.states.get(node).map(|s| &s.maps as &dyn MapView)
    }

    fn cgroup_blocked(&self, node: &str, pod: &ObjectRef) -> Option<bool> {
        let state = self.states.get(node)?;
        Some(state.host_network_blocks.iter().any(|b| b.pod == *pod))
    }
}
