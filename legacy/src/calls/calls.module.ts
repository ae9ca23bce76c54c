// Calls: state in Redis, REST in CallsController, WebRTC signalling over the WebSocket at
// /calls/signal (SignalGateway), fanned out between processes through Redis pub/sub (SignalBus).
import { Module } from '@nestjs/common';
import { CallsController } from './calls.controller';
import { CallsService } from './calls.service';
import { CallsStore } from './calls.store';
import { SignalBus } from './signal.bus';
import { SignalGateway } from './signal.gateway';

@Module({
  controllers: [CallsController],
  providers: [CallsStore, CallsService, SignalBus, SignalGateway],
  exports: [CallsService],
})
export class CallsModule {}
