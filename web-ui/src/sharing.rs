//! The sharing grid behind the device page and `/api/v1/devices/{id}`:
//! a grid as the browser sends it (a form, or JSON from the page's script
//! or an API client), turned into a candidate policy text by
//! [`policy::edit`], then previewed on the device's last message or
//! applied as a new policy version. The hub validates the text exactly as
//! `dataward policy apply` does, so the grid cannot save what the CLI
//! would refuse.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use policy::edit::{Cell, GridEdit};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{call, Change, Session};
#[allow(unused_imports)]
use crate::openapi::ProblemDoc;
use crate::problem::Problem;
use crate::AppState;

/// The grid as JSON: `{"fields": [...], "cells": [{"field", "destination",
/// "action", "params"}], "not_stored": [...], "retention": "30d"}`.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
pub struct GridBody {
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub cells: Vec<CellBody>,
    /// Absent: "don't store" stays as it is for every field; a list: the
    /// shown fields in it are not stored, the others are.
    #[serde(default)]
    pub not_stored: Option<Vec<String>>,
    /// Absent: the device's retention stays as it is; `""`: removed.
    #[serde(default)]
    pub retention: Option<String>,
    /// The policy version the grid was drawn from: if another version is
    /// in force by the time it is saved, the save is refused (409), so an
    /// edit made elsewhere meanwhile is not overwritten unseen.
    #[serde(default)]
    pub base: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CellBody {
    pub field: String,
    pub destination: String,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub params: String,
}

/// Cells a grid may have: 1,024 fields a device may send, times a few
/// destinations, is far below; a body of 64 KiB is the real bound.
const MAX_CELLS: usize = 8192;

impl GridBody {
    pub fn into_edit(self, device: &str) -> Result<GridEdit, Problem> {
        if self.cells.len() > MAX_CELLS {
            return Err(Problem::bad_request("too many cells"));
        }
        Ok(GridEdit {
            device: device.to_string(),
            fields: self.fields,
            cells: self
                .cells
                .into_iter()
                .map(|c| Cell {
                    field: c.field,
                    destination: c.destination,
                    action: c.action.filter(|a| !a.trim().is_empty()),
                    params: c.params,
                })
                .collect(),
            not_stored: self.not_stored,
            retention: self.retention,
        })
    }

    /// The page's form: `f{i}` a field, `d{j}` a destination, `a{i}_{j}`
    /// and `p{i}_{j}` a cell's action and parameters, `n{i}` "don't
    /// store", `retention`.
    pub fn from_form(pairs: &[(String, String)]) -> Result<Self, Problem> {
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let indexed = |prefix: char| -> Vec<(usize, String)> {
            pairs
                .iter()
                .filter_map(|(k, v)| {
                    let i = k.strip_prefix(prefix)?.parse::<usize>().ok()?;
                    Some((i, v.clone()))
                })
                .collect()
        };
        let fields = indexed('f');
        let dests = indexed('d');
        if fields.len() * dests.len() > MAX_CELLS {
            return Err(Problem::bad_request("too many cells"));
        }
        let mut body = GridBody {
            fields: fields.iter().map(|(_, f)| f.clone()).collect(),
            retention: get("retention"),
            base: get("base").and_then(|b| b.parse().ok()),
            not_stored: Some(Vec::new()),
            ..GridBody::default()
        };
        for (i, field) in &fields {
            if get(&format!("n{i}")).is_some() {
                body.not_stored
                    .get_or_insert_with(Vec::new)
                    .push(field.clone());
            }
            for (j, dest) in &dests {
                body.cells.push(CellBody {
                    field: field.clone(),
                    destination: dest.clone(),
                    action: get(&format!("a{i}_{j}")),
                    params: get(&format!("p{i}_{j}")).unwrap_or_default(),
                });
            }
        }
        Ok(body)
    }
}

/// The policy text in force, as the grid edits it, and its version.
pub(crate) async fn text_in_force(state: &AppState) -> Result<(String, u64), Problem> {
    let Json(shown) = call(state, json!({"op": "policy_show"})).await?;
    match (shown["text"].as_str(), shown["version"].as_u64()) {
        (Some(t), Some(v)) => Ok((t.to_string(), v)),
        // Editing "nothing" would replace the user's policy: refuse.
        _ => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed",
            format!(
                "the text of policy version {} is not readable",
                shown["version"]
            ),
        )),
    }
}

/// The candidate text for `edit`, on the version in force, which must
/// be `base` when one is given.
pub(crate) async fn candidate(
    state: &AppState,
    edit: &GridEdit,
    base: Option<u64>,
) -> Result<String, Problem> {
    let (text, version) = text_in_force(state).await?;
    if let Some(b) = base.filter(|b| *b != version) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Changed meanwhile",
            format!(
                "policy version {version} came into force after this grid was drawn from version {b}; reload the page and edit again"
            ),
        ));
    }
    policy::edit::apply_grid(&text, edit).map_err(|e| Problem::bad_request(e.to_string()))
}

/// What each destination would receive of the device's last message
/// under `edit`; with no edit, under the policy in force.
pub(crate) async fn preview(
    state: &AppState,
    device: &str,
    edit: Option<&GridEdit>,
) -> Result<Value, Problem> {
    let candidate = match edit {
        Some(e) => Some(candidate(state, e, None).await?),
        None => None,
    };
    call(
        state,
        json!({"op": "policy_preview", "device": device, "last": true, "candidate": candidate}),
    )
    .await
    .map(|Json(v)| v)
}

/// Applies `edit` as a new policy version. (Between the version check
/// and the apply, a CLI apply could still slip in; the window is one
/// round trip, where before it was as long as the page was open.)
pub(crate) async fn save(
    state: &AppState,
    edit: &GridEdit,
    base: Option<u64>,
) -> Result<Value, Problem> {
    let text = candidate(state, edit, base).await?;
    call(
        state,
        json!({"op": "policy_apply", "text": text, "name": format!("the sharing grid of {}", edit.device)}),
    )
    .await
    .map(|Json(v)| v)
}

/// `GET /api/v1/devices/{id}/sharing`: the grid as it stands.
#[utoipa::path(get, path = "/api/v1/devices/{id}/sharing", tag = "dataward", params(("id" = String, Path, description = "The device id")), responses((status = 200, description = "The grid", body = Object), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "The sharing grid: the device's fields, the destinations, its own rules as cells, retention.")]
pub async fn api_grid(
    State(state): State<Arc<AppState>>,
    _s: Session,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let (text, version) = text_in_force(&state).await?;
    let own =
        policy::edit::device_rules(&text, &id).map_err(|e| Problem::bad_request(e.to_string()))?;
    let Json(fields) = call(&state, json!({"op": "fields", "device": id})).await?;
    let Json(destinations) = call(&state, json!({"op": "destinations"})).await?;
    Ok(Json(json!({
        "device": id,
        "fields": fields["fields"],
        "destinations": destinations,
        "cells": own.cells.iter().map(|c| json!({
            "field": c.field, "destination": c.destination, "action": c.action, "params": c.params,
        })).collect::<Vec<_>>(),
        "not_stored": own.not_stored,
        "retention": own.retention,
        "base": version,
    })))
}

/// `POST /api/v1/devices/{id}/sharing/preview`: a grid, previewed.
#[utoipa::path(post, path = "/api/v1/devices/{id}/sharing/preview", tag = "dataward", request_body = GridBody, params(("id" = String, Path, description = "The device id")), responses((status = 200, description = "The preview", body = Object), (status = 400, description = "Refused: the input, or the hub said no", body = ProblemDoc, content_type = "application/problem+json"), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json"), (status = 403, description = "No CSRF token, or a request from another site", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [], "csrf" = [])), description = "What each destination would receive of the device's last message under an edited grid.")]
pub async fn api_preview(
    State(state): State<Arc<AppState>>,
    _c: Change,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, Problem> {
    let edit = crate::api::body::<GridBody>(&bytes)?.into_edit(&id)?;
    preview(&state, &id, Some(&edit)).await.map(Json)
}

/// `PUT /api/v1/devices/{id}/sharing`: a grid, applied.
#[utoipa::path(put, path = "/api/v1/devices/{id}/sharing", tag = "dataward", request_body = GridBody, params(("id" = String, Path, description = "The device id")), responses((status = 200, description = "The new policy version", body = Object), (status = 400, description = "Refused: the input, or the hub said no", body = ProblemDoc, content_type = "application/problem+json"), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json"), (status = 403, description = "No CSRF token, or a request from another site", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [], "csrf" = [])), description = "Applies an edited grid as a new policy version.")]
pub async fn api_save(
    State(state): State<Arc<AppState>>,
    _c: Change,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, Problem> {
    let body = crate::api::body::<GridBody>(&bytes)?;
    let base = body.base;
    let edit = body.into_edit(&id)?;
    save(&state, &edit, base).await.map(Json)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// `delete`: the history goes too; anything else keeps it.
    #[serde(default)]
    history: String,
    /// With `history=delete`: the device's id, typed.
    #[serde(default)]
    confirm: String,
}

/// Removes a device, and its history if asked (`confirm` must then be
/// its id, as for deleting a whole history). The passphrase is checked
/// first, then the device goes (so nothing more arrives), then its
/// history.
pub(crate) async fn remove(
    state: &AppState,
    s: &Session,
    id: &str,
    delete_history: bool,
    confirm: &str,
) -> Result<Value, Problem> {
    let passphrase = if delete_history {
        if confirm.trim() != id {
            return Err(Problem::bad_request(format!(
                "not confirmed: type {id:?} to delete its history with it"
            )));
        }
        let p = s.unlock(state)?;
        if !state
            .hub
            .check_passphrase(p.clone())
            .await
            .map_err(crate::api::hub_problem)?
        {
            return Err(Problem::unauthorized());
        }
        Some(p)
    } else {
        None
    };
    let Json(removed) = call(state, json!({"op": "device_remove", "id": id})).await?;
    let deleted = match passphrase {
        None => None,
        Some(p) => match state
            .hub
            .call_unlocked(json!({"op": "delete", "device": id}), p)
            .await
        {
            Ok(report) => Some(report),
            Err(e) => {
                return Err(Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Removed, history kept",
                    format!(
                        "{id} was removed, but its history could not be deleted ({}); delete it under Your data",
                        e.message
                    ),
                ))
            }
        },
    };
    Ok(json!({ "removed": removed, "deleted": deleted }))
}

/// `DELETE /api/v1/devices/{id}?history=delete|keep`.
#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "dataward", params(("id" = String, Path, description = "The device id"), RemoveQuery), responses((status = 200, description = "What was removed", body = Object), (status = 400, description = "Refused: the input, or the hub said no", body = ProblemDoc, content_type = "application/problem+json"), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json"), (status = 403, description = "No CSRF token, or a request from another site", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [], "csrf" = [])), description = "Removes a device; with history=delete its history first.")]
pub async fn api_remove(
    State(state): State<Arc<AppState>>,
    Change(s): Change,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<Value>, Problem> {
    remove(&state, &s, &id, q.history == "delete", &q.confirm)
        .await
        .map(Json)
}

/// `GET /api/v1/devices` and `/api/v1/devices/{id}`.
#[utoipa::path(get, path = "/api/v1/devices", tag = "dataward", responses((status = 200, description = "The devices", body = Object), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "The devices, with online, last message and messages today.")]
pub async fn api_devices(
    State(state): State<Arc<AppState>>,
    _s: Session,
) -> Result<Json<Value>, Problem> {
    let Json(mut list) = call(&state, json!({"op": "device_list"})).await?;
    let Json(activity) = call(&state, json!({"op": "device_activity"})).await?;
    let activity = crate::events::activity(&activity);
    for d in list.as_array_mut().into_iter().flatten() {
        let id = d["id"].as_str().unwrap_or_default().to_string();
        if let (Some(obj), Some(a)) = (d.as_object_mut(), activity.get(&id)) {
            for k in ["online", "last_seen_ms", "messages_today"] {
                obj.insert(k.into(), a[k].clone());
            }
        }
    }
    Ok(Json(list))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct AddBody {
    name: String,
    /// generic, tasmota, shelly or zigbee2mqtt.
    preset: String,
    /// The id (MQTT username); made from the name if absent.
    #[serde(default)]
    id: Option<String>,
}

/// `POST /api/v1/devices`: a new device; its password is in the answer,
/// this once.
#[utoipa::path(post, path = "/api/v1/devices", tag = "dataward", request_body = AddBody, responses((status = 201, description = "Added: the device and its password, shown this once", body = Object), (status = 400, description = "Refused: the input, or the hub said no", body = ProblemDoc, content_type = "application/problem+json"), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json"), (status = 403, description = "No CSRF token, or a request from another site", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [], "csrf" = [])), description = "Adds a device with its own generated credentials.")]
pub async fn api_add(
    State(state): State<Arc<AppState>>,
    _c: Change,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let b: AddBody = crate::api::body(&bytes)?;
    let Json(added) = call(
        &state,
        json!({"op": "device_add", "name": b.name, "preset": b.preset, "id": b.id}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(added)))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "dataward", params(("id" = String, Path, description = "The device id")), responses((status = 200, description = "The device", body = Object), (status = 400, description = "Refused: the input, or the hub said no", body = ProblemDoc, content_type = "application/problem+json"), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "One device.")]
pub async fn api_device(
    State(state): State<Arc<AppState>>,
    _s: Session,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    call(&state, json!({"op": "device_show", "id": id})).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_becomes_the_same_grid_as_json() {
        let pairs: Vec<(String, String)> = [
            ("csrf", "x"),
            ("f0", "power"),
            ("f1", "<img src=x>"),
            ("d0", "cloud"),
            ("a0_0", "round"),
            ("p0_0", "step = 5"),
            ("a1_0", ""),
            ("n1", "on"),
            ("retention", "30d"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let edit = GridBody::from_form(&pairs)
            .and_then(|b| b.into_edit("plug"))
            .expect("a grid");
        assert_eq!(edit.fields, ["power", "<img src=x>"]);
        assert_eq!(edit.not_stored, Some(vec!["<img src=x>".to_string()]));
        assert_eq!(edit.retention.as_deref(), Some("30d"));
        assert_eq!(
            edit.cells,
            vec![
                Cell {
                    field: "power".into(),
                    destination: "cloud".into(),
                    action: Some("round".into()),
                    params: "step = 5".into()
                },
                Cell {
                    field: "<img src=x>".into(),
                    destination: "cloud".into(),
                    action: None,
                    params: String::new()
                },
            ]
        );
    }
}
