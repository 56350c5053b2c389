// Hand-written annotations for extract.js (see README.md).
module.exports = { notes: [], cases: {} };
