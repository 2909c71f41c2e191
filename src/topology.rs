//! The shape of the relay: which components feed which, checked when the config is loaded.
//!
//! Components form a directed graph through their `inputs`. Sources have no inputs; sinks (and
//! routes, when they arrive) list sources or routes. The graph must be acyclic, every input must
//! exist and be something that produces events, and every source must feed at least one sink, so
//! no event is accepted only to be thrown away.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::config::Config;
use crate::config::error::{ConfigError, Locator, did_you_mean};

/// What a node of the graph is; decides what may be an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Source,
    Sink,
}

/// One component and the names it takes events from.
pub struct Node<'a> {
    pub name: &'a str,
    pub kind: NodeKind,
    pub inputs: &'a [String],
    /// The dotted config key of the component (`sinks.upstream`).
    pub key: String,
}

/// Every problem with the graph and the listeners of `config`.
pub fn check(config: &Config, locator: &Locator) -> Vec<ConfigError> {
    let mut nodes: Vec<Node> = Vec::new();
    for source in &config.sources {
        nodes.push(Node {
            name: &source.name,
            kind: NodeKind::Source,
            inputs: &[],
            key: format!("sources.{}", source.name),
        });
    }
    for sink in &config.sinks {
        nodes.push(Node {
            name: &sink.name,
            kind: NodeKind::Sink,
            inputs: &sink.inputs,
            key: format!("sinks.{}", sink.name),
        });
    }
    let mut errors = check_graph(&nodes, locator);
    errors.extend(check_listeners(config, locator));
    if config.sources.is_empty() {
        errors.push(locator.error_with_hint(
            "sources",
            "no sources are configured",
            "add a [sources.NAME] table",
        ));
    }
    if config.sinks.is_empty() {
        errors.push(locator.error_with_hint(
            "sinks",
            "no sinks are configured",
            "add a [sinks.NAME] table",
        ));
    }
    errors
}

/// Names are unique, inputs exist and produce events, the graph has no cycle, and every source
/// is read by something.
pub fn check_graph(nodes: &[Node], locator: &Locator) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut by_name: BTreeMap<&str, &Node> = BTreeMap::new();
    for node in nodes {
        if let Some(first) = by_name.insert(node.name, node) {
            errors.push(locator.error(
                &node.key,
                format!("the name {:?} is already used by {}", node.name, first.key),
            ));
        }
    }
    let mut read: BTreeSet<&str> = BTreeSet::new();
    for node in nodes {
        if node.kind == NodeKind::Sink && node.inputs.is_empty() {
            errors.push(locator.error(
                &format!("{}.inputs", node.key),
                "expected at least one input, found none",
            ));
        }
        for (i, input) in node.inputs.iter().enumerate() {
            let key = format!("{}.inputs.{i}", node.key);
            match by_name.get(input.as_str()) {
                None => {
                    let producers = nodes
                        .iter()
                        .filter(|n| n.kind != NodeKind::Sink)
                        .map(|n| n.name);
                    let hint = did_you_mean(input, producers)
                        .map(|near| format!("did you mean {near:?}?"));
                    let message = format!("input {input:?} does not name a source");
                    errors.push(match hint {
                        Some(hint) => locator.error_with_hint(&key, message, hint),
                        None => locator.error(&key, message),
                    });
                }
                Some(target) if target.kind == NodeKind::Sink => {
                    errors.push(locator.error(
                        &key,
                        format!("input {input:?} is a sink; sinks deliver events and produce none"),
                    ));
                }
                Some(_) => {
                    read.insert(input.as_str());
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(nodes, &by_name) {
        let first = by_name
            .get(cycle[0])
            .map(|n| n.key.clone())
            .unwrap_or_default();
        errors.push(locator.error(
            &first,
            format!("the inputs form a cycle: {}", cycle.join(" → ")),
        ));
    }
    for node in nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Source && !read.contains(n.name))
    {
        errors.push(locator.error_with_hint(
            &node.key,
            "no sink lists this source in its inputs; its events would go nowhere",
            format!("add {:?} to a sink's inputs", node.name),
        ));
    }
    errors
}

/// A cycle as the list of names along it (first name repeated at the end), if there is one.
fn find_cycle<'a>(
    nodes: &'a [Node<'a>],
    by_name: &BTreeMap<&'a str, &'a Node<'a>>,
) -> Option<Vec<&'a str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unseen,
        OnPath,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        by_name: &BTreeMap<&'a str, &'a Node<'a>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match marks.get(name).copied().unwrap_or(Mark::Unseen) {
            Mark::Done => return None,
            Mark::OnPath => {
                let start = path.iter().position(|n| *n == name).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(name);
                return Some(cycle);
            }
            Mark::Unseen => {}
        }
        marks.insert(name, Mark::OnPath);
        path.push(name);
        if let Some(node) = by_name.get(name) {
            for input in node.inputs {
                if by_name.contains_key(input.as_str())
                    && let Some(cycle) = visit(input.as_str(), by_name, marks, path)
                {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        marks.insert(name, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in nodes {
        if let Some(cycle) = visit(node.name, by_name, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn check_listeners(config: &Config, locator: &Locator) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut taken: BTreeMap<SocketAddr, String> = BTreeMap::new();
    taken.insert(config.admin.listen, "admin.listen".to_string());
    for source in &config.sources {
        if let Some(addr) = source.settings.listen_addr() {
            let key = format!("sources.{}.listen", source.name);
            if let Some(other) = taken.get(&addr).filter(|_| addr.port() != 0) {
                errors
                    .push(locator.error(&key, format!("{addr} is already the address of {other}")));
            } else {
                taken.insert(addr, key);
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn node<'a>(name: &'a str, kind: NodeKind, inputs: &'a [String]) -> Node<'a> {
        Node {
            name,
            kind,
            inputs,
            key: format!("x.{name}"),
        }
    }

    #[test]
    fn a_cycle_through_inputs_is_reported_with_its_path() {
        // Routes will make cycles possible; the check is ready for them.
        let locator = Locator::new(Path::new("t.toml"), "");
        let a_in = vec!["b".to_string()];
        let b_in = vec!["a".to_string()];
        let nodes = [
            node("a", NodeKind::Source, &a_in),
            node("b", NodeKind::Source, &b_in),
        ];
        let errors = check_graph(&nodes, &locator);
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains("cycle: a → b → a")),
            "{errors:?}"
        );
    }

    #[test]
    fn dangling_and_sink_inputs_are_errors() {
        let locator = Locator::new(Path::new("t.toml"), "");
        let typo = vec!["apii".to_string()];
        let sink_in = vec!["out".to_string()];
        let nodes = [
            node("api", NodeKind::Source, &[]),
            node("out", NodeKind::Sink, &typo),
            node("out2", NodeKind::Sink, &sink_in),
        ];
        let errors = check_graph(&nodes, &locator);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e.contains("\"apii\" does not name a source")
                    && e.contains("did you mean \"api\"")),
            "{text:?}"
        );
        assert!(text.iter().any(|e| e.contains("is a sink")), "{text:?}");
        assert!(
            text.iter()
                .any(|e| e.contains("its events would go nowhere")),
            "{text:?}"
        );
    }
}
