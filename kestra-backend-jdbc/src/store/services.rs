//! The [`ServiceInstanceRepository`]: the service instances the indexer records from heartbeats.

use super::*;

fn service_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[async_trait]
impl ServiceInstanceRepository for Store {
    async fn save(&self, s: &ServiceInstance) -> RepoResult<()> {
        let doc = to_json("service instance", &s.id, s)?;
        let mut qb = Qb::new(
            "INSERT INTO service_instances (id, service_type, state, updated, doc) VALUES (",
        );
        {
            let mut sep = qb.separated(", ");
            sep.push_bind(s.id.clone())
                .push_bind(service_name(&s.type_))
                .push_bind(service_name(&s.state))
                .push_bind(to_ms(s.updated_date))
                .push_bind(doc);
        }
        qb.push(")")
            .push(FLAVOR.upsert(&["id"], &["service_type", "state", "updated", "doc"]));
        qb.build()
            .execute(&self.write)
            .await
            .map_err(repo_err("save service instance"))?;
        Ok(())
    }

    async fn find_by_id(&self, id: &str) -> RepoResult<Option<ServiceInstance>> {
        let row = Qb::new("SELECT id, doc FROM service_instances WHERE id = ")
            .push_bind(id.to_string())
            .build()
            .fetch_optional(&self.read)
            .await
            .map_err(repo_err("find service instance"))?;
        row.map(|r| parse_doc(&r, "service instance", "id", "find service instance"))
            .transpose()
    }

    async fn find_all(&self) -> RepoResult<Vec<ServiceInstance>> {
        let rows = Qb::new("SELECT id, doc FROM service_instances ORDER BY id")
            .build()
            .fetch_all(&self.read)
            .await
            .map_err(repo_err("list service instances"))?;
        rows.iter()
            .map(|r| parse_doc(r, "service instance", "id", "list service instances"))
            .collect()
    }

    async fn delete(&self, id: &str) -> RepoResult<()> {
        Qb::new("DELETE FROM service_instances WHERE id = ")
            .push_bind(id.to_string())
            .build()
            .execute(&self.write)
            .await
            .map_err(repo_err("delete service instance"))?;
        Ok(())
    }
}
