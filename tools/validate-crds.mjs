// Validates the custom resources in rendered manifests against their CRDs' OpenAPI schemas, as
// packaged by @kubernetes-models (prometheus-operator and KEDA). Core kinds are left to
// kubernetes-validate; a custom kind this script does not know fails, so none slips through.
//
//   node tools/validate-crds.mjs rendered.yaml [...]
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";

const models = {
  "monitoring.coreos.com/v1 PrometheusRule": PrometheusRule,
  "monitoring.coreos.com/v1 ServiceMonitor": ServiceMonitor,
  "keda.sh/v1alpha1 ScaledObject": ScaledObject,
  "keda.sh/v1alpha1 TriggerAuthentication": TriggerAuthentication,
};
const core = /^(v1|apps\/v1|policy\/v1|networking\.k8s\.io\/v1|autoscaling\/v2|rbac\.authorization\.k8s\.io\/v1)$/;

let failures = 0;
for (const file of process.argv.slice(2)) {
  for (const document of parseAllDocuments(readFileSync(file, "utf8"))) {
    const object = document.toJS();
    if (!object) continue;
    const key = `${object.apiVersion} ${object.kind}`;
    const name = `${file}: ${object.kind}/${object.metadata?.name}`;
    if (core.test(object.apiVersion)) continue;
    const Model = models[key];
    if (!Model) {
      console.log(`FAIL ${name}: no schema for ${key}`);
      failures += 1;
      continue;
    }
    try {
      new Model(object).validate();
      console.log(`ok   ${name} (${key})`);
    } catch (error) {
      console.log(`FAIL ${name}: ${error.message}`);
      failures += 1;
    }
  }
}
process.exit(failures === 0 ? 0 : 1);
