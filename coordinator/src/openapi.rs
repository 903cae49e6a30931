//! The API's OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and
//! the wire types in `clonepool_common::api` (never written by hand).

use clonepool_common::api::{
    AgentPool, CloneInfo, CloneList, ClonePath, CloneRef, CloneRequest, CloneResult, CloneStatus,
    DeleteResponse, ExtendRequest, JobAccepted, JobResult, JobState, JobStatus, JobType,
    PoolStatus, RestoreRequest, RestoreResult, RestoreSource, RollbackRequest, RollbackResult,
    SiteLogin, SkippedItem,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Documents `clonepool_common::error::ErrorBody` (which lives in a crate without utoipa);
/// a unit test keeps the two in step.
#[derive(ToSchema)]
#[schema(as = ErrorBody)]
#[allow(dead_code)]
pub struct ErrorBodyDoc {
    pub error: ErrorDetailDoc,
}

#[derive(ToSchema)]
#[schema(as = ErrorDetail)]
#[allow(dead_code)]
pub struct ErrorDetailDoc {
    /// Stable code: bad_request, unauthorized, not_found, conflict, payload_too_large,
    /// queue_full, invalid_url, forbidden_url, idempotency_key_reused, method_not_allowed,
    /// internal, unavailable.
    pub code: String,
    /// What went wrong, for humans.
    pub message: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "clonepool API",
        description = "Short-lived clones of WordPress sites. Every route needs `Authorization: Bearer <token>`. Errors are `{\"error\": {\"code\", \"message\"}}`.",
    ),
    paths(
        crate::http_api::post_clone,
        crate::http_api::get_job_status,
        crate::http_api::cancel_job,
        crate::http_api::cancel_job_by_delete,
        crate::http_api::post_restore,
        crate::http_api::post_rollback,
        crate::http_api::delete_clone,
        crate::http_api::list_clones,
        crate::http_api::get_clone,
        crate::http_api::extend_clone,
        crate::http_api::get_pool,
        crate::http_api::get_openapi,
    ),
    components(schemas(
        CloneRequest, JobAccepted, JobStatus, JobState, JobType, JobResult, CloneResult, ClonePath,
        RestoreRequest, RestoreSource, SiteLogin, RollbackRequest, RestoreResult, RollbackResult,
        SkippedItem, CloneRef, CloneInfo, CloneList, CloneStatus,
        ExtendRequest, DeleteResponse, PoolStatus, AgentPool, ErrorBodyDoc, ErrorDetailDoc,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "clones", description = "Create, list, extend and delete clones"),
        (name = "jobs", description = "Follow and cancel jobs"),
        (name = "restores", description = "Push a clone back to production"),
        (name = "pool", description = "Warm pods per agent"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clonepool_common::error::ErrorBody;

    #[test]
    fn the_document_lists_every_v2_route_and_schema() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths["/api/v2/job-status/{job_id}"]["delete"].is_object());
        for path in [
            "/api/v2/clone",
            "/api/v2/job-status/{job_id}",
            "/api/v2/job-status/{job_id}/cancel",
            "/api/v2/restore",
            "/api/v2/rollback",
            "/api/v2/delete/{clone_id}",
            "/api/v2/clones",
            "/api/v2/clones/{clone_id}",
            "/api/v2/clones/{clone_id}/extend",
            "/api/v2/pool",
            "/api/v2/openapi.json",
        ] {
            assert!(paths.contains_key(path), "missing {path}");
        }
        let clone_request = &doc["components"]["schemas"]["CloneRequest"];
        let required: Vec<&str> = clone_request["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            required,
            ["source_url", "source_username", "source_password"]
        );
        assert_eq!(clone_request["additionalProperties"], false);
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn the_documented_error_body_matches_the_real_one() {
        let doc = document();
        let real = serde_json::to_value(ErrorBody::new("bad_request", "m")).unwrap();
        let documented = &doc["components"]["schemas"]["ErrorBody"]["properties"];
        assert_eq!(
            documented.as_object().unwrap().keys().collect::<Vec<_>>(),
            real.as_object().unwrap().keys().collect::<Vec<_>>()
        );
        let detail = &doc["components"]["schemas"]["ErrorDetail"]["properties"];
        let mut keys: Vec<_> = detail.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        let mut real_keys: Vec<_> = real["error"].as_object().unwrap().keys().cloned().collect();
        real_keys.sort();
        assert_eq!(keys, real_keys);
    }
}
