// Scenario 1 of docs/walkthrough.md, as a Node client: the stubs are built at run time
// from proto/ by @grpc/proto-loader. test.js runs it; docs/clients.md shows it.
const path = require('node:path');
const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');
const protoFiles = fs.readdirSync(path.join(PROTO_ROOT, 'consent', 'v1'))
  .filter((name) => name.endsWith('.proto'))
  .map((name) => `consent/v1/${name}`);
const definition = protoLoader.loadSync(protoFiles, {
  includeDirs: [PROTO_ROOT], keepCase: true, longs: Number, enums: String, defaults: true,
});
const { v1 } = grpc.loadPackageDefinition(definition).consent;

// Calls a unary method and resolves with its answer.
const call = (client, method, request) => new Promise((resolve, reject) =>
  client[method](request, (error, answer) => (error ? reject(error) : resolve(answer))));

// Alice and Bob share an e-mail address; Alice opts out; only Bob may be e-mailed.
async function sharedAddressOptOut(address) {
  const credentials = grpc.credentials.createInsecure();
  const profiles = new v1.ProfileService(address, credentials);
  const consent = new v1.ConsentService(address, credentials);
  const eligibility = new v1.EligibilityService(address, credentials);
  for (const profile_id of ['alice', 'bob']) {
    await call(profiles, 'UpsertProfile', {
      tenant: 'acme', profile_id, emails: ['shared@example.com'],
      context: { source: 'SOURCE_IMPORT' },
    });
  }
  await call(consent, 'OptOut', {
    tenant: 'acme', profile_id: 'alice', all_channels: true,
    context: { source: 'SOURCE_LANDING_PAGE' },
  });
  const answer = await call(eligibility, 'BatchCheckEligibility', {
    tenant: 'acme', channel: 'CHANNEL_EMAIL', profile_ids: ['alice', 'bob'],
  });
  const [alice, bob] = answer.decisions;
  if (alice.eligible || alice.reasons[0] !== 'EXCLUSION_REASON_OPTED_OUT_ALL_CHANNELS'
      || !bob.eligible || bob.addresses.join() !== 'shared@example.com') {
    throw new Error(`unexpected decisions: ${JSON.stringify(answer.decisions)}`);
  }
  for (const client of [profiles, consent, eligibility]) client.close();
  return answer.summary;
}

module.exports = { v1, grpc, call, sharedAddressOptOut };

if (require.main === module) {
  sharedAddressOptOut('localhost:50051').then((summary) => console.log(summary)); // total 2, eligible 1, excluded 1
}
