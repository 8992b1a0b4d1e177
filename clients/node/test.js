// consentd's user scenarios through a Node client built from proto/ at run time.
//
//   node clients/node/test.js [CONSENTD_BINARY]
//
// Starts the consentd binary (default: $CONSENTD_BIN, then target/debug/consentd)
// on a free port with a temporary data directory, runs the scenarios, and
// stops the server. `cargo test --test it -- --ignored node_client` runs it with
// the binary cargo built. Exits non-zero on the first failed check.
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { v1, grpc, call, sharedAddressOptOut } = require('./example');

const ROOT = path.join(__dirname, '..', '..');
const START_TIMEOUT_MS = 60_000;
// A 10,000-decision answer is about 0.5 MB; grpc-js's default limit is 4 MiB.
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

// Starts `consentd serve` on 127.0.0.1:0; resolves with { child, address, log }.
function startServer(binary, dataDir) {
  const child = spawn(binary, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1' },
  });
  const log = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`consentd did not start:\n${log.join('')}`)),
      START_TIMEOUT_MS);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text) => {
      log.push(text);
      const found = log.join('').match(/listening on (\S+)/);
      if (found) {
        clearTimeout(timer);
        resolve({ child, address: found[1], log });
      }
    });
    child.on('exit', (code) => reject(new Error(`consentd exited with ${code}:\n${log.join('')}`)));
  });
}

function stopServer({ child, log }) {
  return new Promise((resolve, reject) => {
    child.removeAllListeners('exit');
    child.on('exit', (code) => (code === 0 ? resolve()
      : reject(new Error(`consentd exited with ${code}:\n${log.join('')}`))));
    child.kill('SIGTERM');
  });
}

function clients(address) {
  const credentials = grpc.credentials.createInsecure();
  const options = {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  };
  return {
    profiles: new v1.ProfileService(address, credentials, options),
    consent: new v1.ConsentService(address, credentials, options),
    quarantine: new v1.QuarantineService(address, credentials, options),
    eligibility: new v1.EligibilityService(address, credentials, options),
  };
}

async function hardBounceQuarantinesBoth({ quarantine, eligibility }) {
  const recorded = await call(quarantine, 'RecordDeliveryFeedback', {
    tenant: 'acme', address: 'shared@example.com', kind: 'FEEDBACK_KIND_HARD_BOUNCE',
    error_reason: 'DELIVERY_ERROR_REASON_USER_UNKNOWN', event_id: 'mta-0001',
    context: { source: 'SOURCE_DELIVERY_FEEDBACK', actor: 'mta' },
  });
  assert.equal(recorded.recorded, true);
  assert.equal(recorded.state.status, 'ADDRESS_STATUS_QUARANTINED');
  const answer = await call(eligibility, 'BatchCheckEligibility', {
    tenant: 'acme', channel: 'CHANNEL_EMAIL', profile_ids: ['alice', 'bob'],
  });
  const [alice, bob] = answer.decisions;
  assert.deepEqual(alice.reasons, ['EXCLUSION_REASON_OPTED_OUT_ALL_CHANNELS',
    'EXCLUSION_REASON_ADDRESS_QUARANTINED']);
  assert.equal(bob.eligible, false);
  assert.deepEqual(bob.reasons, ['EXCLUSION_REASON_ADDRESS_QUARANTINED']);
  assert.deepEqual([answer.summary.total, answer.summary.eligible, answer.summary.excluded],
    [2, 0, 2]);
}

async function channelOnlyOptOut({ profiles, consent, eligibility }) {
  await call(profiles, 'UpsertProfile', {
    tenant: 'acme', profile_id: 'carol', emails: ['carol@example.com'], phones: ['+447700900123'],
    context: { source: 'SOURCE_IMPORT' },
  });
  const changed = await call(consent, 'OptOut', {
    tenant: 'acme', profile_id: 'carol', channel: 'CHANNEL_SMS',
    context: { source: 'SOURCE_OPERATOR', actor: 'agent-7' },
  });
  assert.equal(changed.changed, true);
  const decide = async (channel) => (await call(eligibility, 'CheckEligibility', {
    tenant: 'acme', profile_id: 'carol', channel,
  })).decision;
  const email = await decide('CHANNEL_EMAIL');
  assert.equal(email.eligible, true);
  assert.deepEqual(email.addresses, ['carol@example.com']);
  const sms = await decide('CHANNEL_SMS');
  assert.equal(sms.eligible, false);
  assert.deepEqual(sms.reasons, ['EXCLUSION_REASON_OPTED_OUT_CHANNEL']);
  const voice = await decide('CHANNEL_VOICE');
  assert.equal(voice.eligible, true);
}

// 300 known profiles (every 10th opted out of all channels) and 9,700 unknown ids.
async function batchOfTenThousand({ profiles, consent, eligibility }) {
  const known = Array.from({ length: 300 }, (_, i) => `member-${i}`);
  // Concurrent writes share group commits.
  await Promise.all(known.map((profile_id) => call(profiles, 'UpsertProfile', {
    tenant: 'batch', profile_id, emails: [`${profile_id}@example.com`],
    context: { source: 'SOURCE_IMPORT' },
  })));
  await Promise.all(known.filter((_, i) => i % 10 === 0).map((profile_id) =>
    call(consent, 'OptOut', {
      tenant: 'batch', profile_id, all_channels: true, context: { source: 'SOURCE_IMPORT' },
    })));
  const ids = known.concat(Array.from({ length: 10_000 - known.length }, (_, i) => `stranger-${i}`));
  const answer = await call(eligibility, 'BatchCheckEligibility', {
    tenant: 'batch', channel: 'CHANNEL_EMAIL', profile_ids: ids,
  });
  assert.deepEqual(answer.decisions.map((d) => d.profile_id), ids);
  const { summary } = answer;
  assert.deepEqual([summary.total, summary.eligible, summary.excluded], [10_000, 270, 9_730]);
  assert.deepEqual(summary.excluded_by_reason.map((c) => [c.reason, c.count]), [
    ['EXCLUSION_REASON_PROFILE_NOT_FOUND', 9_700],
    ['EXCLUSION_REASON_OPTED_OUT_ALL_CHANNELS', 30],
  ]);
}

async function main() {
  const binary = process.argv[2] || process.env.CONSENTD_BIN
    || path.join(ROOT, 'target', 'debug', 'consentd');
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'consentd-node-'));
  const server = await startServer(binary, dataDir);
  const all = clients(server.address);
  try {
    const summary = await sharedAddressOptOut(server.address);
    assert.deepEqual([summary.total, summary.eligible, summary.excluded], [2, 1, 1]);
    console.log('ok: shared address, one profile opted out');
    await hardBounceQuarantinesBoth(all);
    console.log('ok: a hard bounce quarantines the address for both profiles');
    await channelOnlyOptOut(all);
    console.log('ok: an SMS-only opt-out leaves e-mail and voice allowed');
    await batchOfTenThousand(all);
    console.log('ok: a 10,000-recipient batch and its summary');
  } finally {
    for (const client of Object.values(all)) client.close();
    await stopServer(server);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  console.log('node client: all scenarios passed');
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
