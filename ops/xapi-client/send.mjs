// Sends statements to an xAPI endpoint with @xapi/xapi, configured the way
// its users point it at an LRS: endpoint URL, key, secret.
//
//   node send.mjs <endpoint> <key> <secret>
//
// Prints one JSON line: the versions from /about and the ids the endpoint
// answered for one single and one batched send.
import XAPI from "@xapi/xapi";

const [endpoint, key, secret] = process.argv.slice(2);
if (!secret) {
  console.error("usage: node send.mjs <endpoint> <key> <secret>");
  process.exit(2);
}
const xapi = new XAPI({ endpoint, auth: XAPI.toBasicAuth(key, secret), version: "1.0.3" });

const actor = { objectType: "Agent", name: "Ann Lee", mbox: "mailto:ann@example.org" };
const quiz = {
  objectType: "Activity",
  id: "https://lms.example/mod/quiz/view.php?id=3",
  definition: {
    name: { "en-US": "Quiz 3" },
    type: "http://adlnet.gov/expapi/activities/assessment",
    interactionType: "choice",
    correctResponsesPattern: ["golf[,]tetris"],
    choices: [
      { id: "golf", description: { "en-US": "Golf" } },
      { id: "tetris", description: { "en-US": "Tetris" } },
    ],
  },
};
const course = { id: "https://lms.example/course/view.php?id=7" };

try {
  const about = await xapi.getAbout();
  const single = await xapi.sendStatement({
    statement: {
      actor,
      verb: XAPI.Verbs.INITIALIZED,
      object: quiz,
      context: { contextActivities: { parent: [course] }, platform: "Moodle" },
      timestamp: new Date(Date.now() - 2 * 365 * 86400000).toISOString(),
    },
  });
  const batch = await xapi.sendStatements({
    statements: [
      {
        actor,
        verb: XAPI.Verbs.ANSWERED,
        object: quiz,
        result: { response: "golf[,]tetris", success: true, duration: XAPI.calculateISO8601Duration(new Date(0), new Date(92000)) },
        context: { contextActivities: { parent: [course] } },
      },
      {
        actor,
        verb: XAPI.Verbs.PASSED,
        object: quiz,
        result: { score: { scaled: 0.9, raw: 9, min: 0, max: 10 }, success: true, completion: true },
        context: { contextActivities: { parent: [course] } },
        timestamp: new Date(Date.now() + 86400000).toISOString(),
      },
    ],
  });
  console.log(JSON.stringify({ about: about.data.version, ids: [...single.data, ...batch.data] }));
} catch (error) {
  const response = error.response;
  console.error(response ? `HTTP ${response.status}: ${JSON.stringify(response.data)}` : String(error));
  process.exit(1);
}
