# The NestJS monolith (legacy/), built and run with Node 20.
FROM node:20-bookworm-slim
WORKDIR /app
COPY legacy/package.json legacy/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY legacy/ ./
RUN npx tsc -p tsconfig.json && npm prune --omit=dev
ENV HOST=0.0.0.0 PORT=3000
CMD ["node", "dist/src/main.js"]
